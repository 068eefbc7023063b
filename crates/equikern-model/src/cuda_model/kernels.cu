// SevenNet on the GPU: the hand-written kernels of `CudaSevenNet` (everything but the
// convolutions, which are equikern's `ConvOp`, and the radial MLP's last product, which is
// cuBLAS or `ek_gemm` — its backward `ek_gemm_tf32x3_nt` on tensor cores with 3xTF32 on; its
// hidden layers are `ek_mlp_hidden[_backward]`, or cuBLAS + `ek_act` with
// EQUIKERN_MODEL_MLP=cublas).
//
// Compiled by NVRTC once per (model, dtype) after a generated prelude that defines `real`
// (float or double), `EK_EXP` and the spherical-harmonics recursion table of the model's
// lmax (`EK_SH_LMAX`, `ek_sh_start`, `ek_sh_cab`, `ek_sh_w`) and the radial MLP's hidden
// shapes (`EK_MLP_*`). Every kernel is a grid-stride
// loop whose iterations are independent (each output element written once, by one
// iteration, in a fixed order: no atomics, deterministic), so the same text also runs as
// plain C++ one iteration at a time (tests/cuda_kernels_cpu.rs). The fused radial-MLP kernels
// also stage weights per block behind one barrier (before any iteration), so the emulation
// runs each block's threads concurrently for them. `ek_gemm_tf32x3_nt` is a tiled product
// (grid-stride over 256-row tiles, barriers per k chunk, warp-wide `mma`): the emulation
// runs it with concurrent threads too, its `mma` exchanging the lanes' fragments.
//
// Edge geometry is computed in double from double edge vectors and rounded to `real`, as
// the host model does; atomic energies, edge forces, forces and the virial are double.

typedef unsigned long long u64;

#define EK_FOR(i, n)                                                         \
  for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (u64)(n);    \
       i += (u64)gridDim.x * blockDim.x)
// The same stride, but a warp's lanes run the same iterations (a tail lane's i ≥ n): for
// bodies with warp-wide steps (__syncwarp); the body must not touch row i past n.
#define EK_FOR_WARP(i, n)                                                            \
  for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;                          \
       i - (threadIdx.x & 31) < (u64)(n); i += (u64)gridDim.x * blockDim.x)

// Loop unrolling hints (the CPU emulation defines them empty).
#ifndef EK_UNROLL
#define EK_UNROLL _Pragma("unroll")
#define EK_NO_UNROLL _Pragma("unroll 1")
#endif

__device__ inline real ek_silu(real x) { return x / ((real)1 + EK_EXP(-x)); }

__device__ inline real ek_silu_grad(real x) {
  real s = (real)1 / ((real)1 + EK_EXP(-x));
  return s + x * s * ((real)1 - s);
}

// ---------------------------------------------------------------------------------------
// Edge geometry

// Cutoff envelope value and d/dr. kind 0: XPLOR (r_on, r_cut); kind 1: polynomial (r_cut, p).
__device__ inline void ek_envelope(double r, int kind, double r_on, double r_cut, double p,
                                   double* f, double* df) {
  if (kind == 0) {
    if (r < r_on) {
      *f = 1.0;
      *df = 0.0;
      return;
    }
    double rc2 = r_cut * r_cut, r2 = r * r, ro2 = r_on * r_on;
    double q = rc2 - ro2;
    double den = q * q * q;
    double a = rc2 - r2;
    double b = rc2 + 2.0 * r2 - 3.0 * ro2;
    *f = a * a * b / den;
    *df = (-4.0 * r * a * b + 4.0 * r * a * a) / den;
  } else {
    double x = r / r_cut;
    double c0 = (p + 1.0) * (p + 2.0) / 2.0;
    double c1 = p * (p + 2.0);
    double c2 = p * (p + 1.0) / 2.0;
    *f = 1.0 - c0 * pow(x, p) + c1 * pow(x, p + 1.0) - c2 * pow(x, p + 2.0);
    *df = (-c0 * p * pow(x, p - 1.0) + c1 * (p + 1.0) * pow(x, p) -
           c2 * (p + 2.0) * pow(x, p + 1.0)) /
          r_cut;
  }
}

#define EK_SH_DIM ((EK_SH_LMAX + 1) * (EK_SH_LMAX + 1))

// Spherical harmonics l = 0..EK_SH_LMAX (component normalisation, e3nn order and signs) of
// u = v / max(|v|, 1e-12), and (when g != 0) d Y / d u as g[c*3 + d].
__device__ inline void ek_sh_all(const double u[3], double* y, double* g) {
  y[0] = 1.0;
  if (g) {
    g[0] = 0.0;
    g[1] = 0.0;
    g[2] = 0.0;
  }
  for (int l = 0; l < EK_SH_LMAX; ++l) {
    int prev = l * l, cur = (l + 1) * (l + 1), nn = 2 * l + 3;
    for (int c = 0; c < nn; ++c) {
      y[cur + c] = 0.0;
      if (g) {
        g[(cur + c) * 3 + 0] = 0.0;
        g[(cur + c) * 3 + 1] = 0.0;
        g[(cur + c) * 3 + 2] = 0.0;
      }
    }
    for (int s = ek_sh_start[l]; s < ek_sh_start[l + 1]; ++s) {
      int c = ek_sh_cab[3 * s], a = ek_sh_cab[3 * s + 1], b = ek_sh_cab[3 * s + 2];
      double w = ek_sh_w[s];
      y[cur + c] += w * y[prev + a] * u[b];
      if (g) {
        for (int d = 0; d < 3; ++d) g[(cur + c) * 3 + d] += w * g[(prev + a) * 3 + d] * u[b];
        g[(cur + c) * 3 + b] += w * y[prev + a];
      }
    }
  }
}

// Per edge: emb[e, k] = bessel_k(r) * envelope(r) and sh[e, :] = Y(v_e), rounded to real.
extern "C" __global__ void ek_edge_geometry(u64 edges, const double* __restrict__ vec,
                                            const double* __restrict__ coeffs, int nb,
                                            double cutoff, int env_kind, double r_on,
                                            double p, real* emb, real* sh) {
  EK_FOR(e, edges) {
    double v[3] = {vec[3 * e], vec[3 * e + 1], vec[3 * e + 2]};
    double r = sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
    double f, df;
    ek_envelope(r, env_kind, r_on, cutoff, p, &f, &df);
    double pre = 2.0 / cutoff;
    for (int k = 0; k < nb; ++k) {
      double s = sin(coeffs[k] * r);
      emb[e * nb + k] = (real)(pre * s / r * f);
    }
    double scale = r > 1e-12 ? r : 1e-12;
    double u[3] = {v[0] / scale, v[1] / scale, v[2] / scale};
    double y[EK_SH_DIM];
    ek_sh_all(u, y, 0);
    for (int c = 0; c < EK_SH_DIM; ++c) sh[e * EK_SH_DIM + c] = (real)y[c];
  }
}

// Per edge: f_e = dE/dv_e from g_emb = dE/d emb [E, nb] and g_sh = dE/d sh [E, sh_dim],
// recomputing d emb/dr and dY/dv from v_e (nothing per edge is kept from the forward).
extern "C" __global__ void ek_edge_force(u64 edges, const double* __restrict__ vec,
                                         const double* __restrict__ coeffs, int nb,
                                         double cutoff, int env_kind, double r_on, double p,
                                         const real* __restrict__ g_emb,
                                         const real* __restrict__ g_sh, double* fe, u64 fold) {
  EK_FOR(e, edges) {
    // pair rows (fold > 0): edges e and e + fold share row e of g_emb (the pair's radial
    // gradient) and take half of it each
    const u64 row = e >= fold ? e - fold : e;
    const double share = fold ? 0.5 : 1.0;
    double v[3] = {vec[3 * e], vec[3 * e + 1], vec[3 * e + 2]};
    double r = sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
    double f, df;
    ek_envelope(r, env_kind, r_on, cutoff, p, &f, &df);
    double pre = 2.0 / cutoff;
    double g_r = 0.0;
    for (int k = 0; k < nb; ++k) {
      double c = coeffs[k];
      double s = sin(c * r), co = cos(c * r);
      double b = pre * s / r;
      double db = pre * (c * co / r - s / (r * r));
      g_r += (double)g_emb[row * nb + k] * (db * f + b * df);
    }
    g_r *= share;
    double scale = r > 1e-12 ? r : 1e-12;
    double u[3] = {v[0] / scale, v[1] / scale, v[2] / scale};
    double jac[3][3];
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) {
        double id = i == j ? 1.0 : 0.0;
        jac[i][j] = r > 1e-12 ? (id - u[i] * u[j]) / r : id / scale;
      }
    double y[EK_SH_DIM], gu[EK_SH_DIM * 3];
    ek_sh_all(u, y, gu);
    for (int d = 0; d < 3; ++d) {
      double acc = g_r * v[d] / r;
      for (int c = 0; c < EK_SH_DIM; ++c) {
        double dsh = gu[c * 3] * jac[0][d] + gu[c * 3 + 1] * jac[1][d] + gu[c * 3 + 2] * jac[2][d];
        acc += (double)g_sh[e * EK_SH_DIM + c] * dsh;
      }
      fe[3 * e + d] = acc;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Node layers

// out[n, k] = (types[n] == k), k < ns.
extern "C" __global__ void ek_one_hot(u64 nodes, const unsigned* __restrict__ types, int ns,
                                      real* out) {
  EK_FOR(i, nodes * (u64)ns) {
    u64 n = i / (u64)ns;
    int k = (int)(i % (u64)ns);
    out[i] = types[n] == (unsigned)k ? (real)1 : (real)0;
  }
}

// e3nn Linear (or its transpose) on rows: y[n, j] = alpha * Σ_paths coef Σ_u W[..] x[..] + add.
// tab: [n_blocks, then per output block (out_off, mul_out, dim, first_path, n_paths), then
// per path (in_off, mul_in, w_off)] at offset 1 + 5 n_blocks; coef[path].
// Output element j = out_off + w*dim + m of a block:
//   Σ_{paths into the block} coef · Σ_u x[n, in_off + u*dim + m] · W[w_off + u*mul_out + w].
// Register tiles: one iteration computes EK_LIN_NODES consecutive rows × EK_LIN_COLS
// consecutive w (same block, same m), so per u it loads EK_LIN_NODES x values and
// EK_LIN_COLS weights for EK_LIN_NODES·EK_LIN_COLS multiply-adds. Iterations:
// ceil(nodes / EK_LIN_NODES) × cols, cols = Σ_blocks ceil(mul_out / EK_LIN_COLS) · dim, the
// column groups of a block numbered (w group, m) with m fastest (consecutive iterations:
// consecutive m or w group: coalesced x or weights, the other broadcast). Every output
// element keeps the host's summation order (u ascending per path, paths in order).
// `add` may be y itself (the residual sums): each element is read, then written, by the one
// iteration that owns it, so it is not `__restrict__`.
extern "C" __global__ void ek_linear(u64 nodes, const real* __restrict__ x, int in_dim,
                                     real* y, int out_dim, const real* __restrict__ W,
                                     const int* __restrict__ tab,
                                     const real* __restrict__ coef, real alpha,
                                     const real* add, int cols) {
  int nblocks = tab[0];
  const int* paths = tab + 1 + 5 * nblocks;
  u64 groups = (nodes + EK_LIN_NODES - 1) / EK_LIN_NODES;
  EK_FOR(i, groups * (u64)cols) {
    u64 n0 = (i / (u64)cols) * EK_LIN_NODES;
    int c = (int)(i % (u64)cols);
    const int* blk = tab + 1;
    int b = 0;
    for (; b < nblocks; ++b) {
      blk = tab + 1 + 5 * b;
      int nc = ((blk[1] + EK_LIN_COLS - 1) / EK_LIN_COLS) * blk[2];
      if (c < nc) break;
      c -= nc;
    }
    if (b == nblocks) continue;
    int off = blk[0], mo = blk[1], dim = blk[2];
    int m = c % dim, w0 = (c / dim) * EK_LIN_COLS;
    // rows/columns past the end read the last valid one and are not written
    u64 row[EK_LIN_NODES];
    for (int q = 0; q < EK_LIN_NODES; ++q) row[q] = n0 + q < nodes ? n0 + q : nodes - 1;
    int col[EK_LIN_COLS];
    for (int k = 0; k < EK_LIN_COLS; ++k) col[k] = w0 + k < mo ? w0 + k : mo - 1;
    real acc[EK_LIN_NODES][EK_LIN_COLS];
    for (int q = 0; q < EK_LIN_NODES; ++q)
      for (int k = 0; k < EK_LIN_COLS; ++k) acc[q][k] = (real)0;
    for (int p = blk[3]; p < blk[3] + blk[4]; ++p) {
      int in_off = paths[3 * p], mi = paths[3 * p + 1], w_off = paths[3 * p + 2];
      real t[EK_LIN_NODES][EK_LIN_COLS];
      for (int q = 0; q < EK_LIN_NODES; ++q)
        for (int k = 0; k < EK_LIN_COLS; ++k) t[q][k] = (real)0;
      for (int u = 0; u < mi; ++u) {
        real wv[EK_LIN_COLS], xv[EK_LIN_NODES];
        for (int k = 0; k < EK_LIN_COLS; ++k) wv[k] = W[w_off + u * mo + col[k]];
        for (int q = 0; q < EK_LIN_NODES; ++q)
          xv[q] = x[row[q] * (u64)in_dim + in_off + u * dim + m];
        for (int q = 0; q < EK_LIN_NODES; ++q)
          for (int k = 0; k < EK_LIN_COLS; ++k) t[q][k] += xv[q] * wv[k];
      }
      for (int q = 0; q < EK_LIN_NODES; ++q)
        for (int k = 0; k < EK_LIN_COLS; ++k) acc[q][k] += coef[p] * t[q][k];
    }
    for (int q = 0; q < EK_LIN_NODES; ++q) {
      if (n0 + q >= nodes) break;
      for (int k = 0; k < EK_LIN_COLS; ++k) {
        if (w0 + k >= mo) break;
        u64 o = (n0 + q) * (u64)out_dim + off + (w0 + k) * dim + m;
        y[o] = alpha * acc[q][k] + (add ? add[o] : (real)0);
      }
    }
  }
}

// One path of an e3nn Linear between blocks of dim > 1, without `W ⊗ I_dim`'s zeros:
//   y[i, v·DIM + m] = alpha · Σ_u x[i, u·DIM + m] · w[u·mo + v]   (+ y[i, v·DIM + m] if acc)
// x, y: the blocks' first elements, rows ldx / ldy apart; w: the path's [mi, mo] weights.
// Why a kernel: as a product this is [nodes·DIM, mi] · [mi, mo] with rows (i, m) gathered,
// which the mul_ir layout cannot hand to a library gemm (neither index of x's block has unit
// stride across nodes); the cuBLAS route multiplies by W ⊗ I_dim, DIM times the work (Si
// 32,768: `m32768 n1760 k160` 0.49 ms for 3.7 GFLOP of useful work).
// An iteration is one node's DIM rows × EK_LP_TN consecutive columns (its outputs are one
// contiguous run of EK_LP_TN·DIM values); a warp's 32 iterations are ek_lp_lanes_c column
// groups × the rest nodes, so lanes share x loads (same node) and w loads (same columns)
// through L1. Per 4 u: DIM 16-byte x loads and 2·4 of w (f32) for 32·DIM multiply-adds. No
// shared memory, no barrier, each output written once (the emulation runs it serially).
#define EK_LP_TN 8
__device__ __forceinline__ int ek_lp_lanes_c(int cgs) {
  return cgs >= 8 ? 8 : cgs >= 4 ? 4 : cgs >= 2 ? 2 : 1;
}
// Iterations of a launch over `nodes` rows and `mo` output channels.
__device__ __forceinline__ u64 ek_lp_iterations(u64 nodes, int mo) {
  int cgs = (mo + EK_LP_TN - 1) / EK_LP_TN, lc = ek_lp_lanes_c(cgs), ln = 32 / lc;
  return ((nodes + ln - 1) / ln) * (u64)((cgs + lc - 1) / lc) * 32ull;
}
// 16-byte vector loads and stores of EK_VW reals (float4 / double2); p 16-byte aligned.
#ifdef EK_REAL_F32
typedef float4 ek_vec;
#define EK_VW 4
__device__ __forceinline__ void ek_vld(const real* p, real* v) {
  float4 t = *(const float4*)p;
  v[0] = t.x;
  v[1] = t.y;
  v[2] = t.z;
  v[3] = t.w;
}
__device__ __forceinline__ void ek_vst(real* p, const real* v) {
  float4 t;
  t.x = v[0];
  t.y = v[1];
  t.z = v[2];
  t.w = v[3];
  *(float4*)p = t;
}
#else
typedef double2 ek_vec;
#define EK_VW 2
__device__ __forceinline__ void ek_vld(const real* p, real* v) {
  double2 t = *(const double2*)p;
  v[0] = t.x;
  v[1] = t.y;
}
__device__ __forceinline__ void ek_vst(real* p, const real* v) {
  double2 t;
  t.x = v[0];
  t.y = v[1];
  *(double2*)p = t;
}
#endif
__device__ __forceinline__ bool ek_aligned16(const void* p) { return ((u64)p & 15ull) == 0; }
// o[0..4) = p[0..4) (16-byte loads where `vec`).
__device__ __forceinline__ void ek_ld4(const real* p, bool vec, real* o) {
  if (vec) {
    EK_UNROLL
    for (int h = 0; h < 4; h += EK_VW) ek_vld(p + h, o + h);
    return;
  }
  EK_UNROLL
  for (int h = 0; h < 4; ++h) o[h] = p[h];
}
template <int DIM>
__device__ __forceinline__ void ek_linear_path_it(u64 it, u64 nodes, int mi, int mo,
                                                  const real* __restrict__ x, u64 ldx,
                                                  const real* __restrict__ w, real alpha,
                                                  int acc, real* __restrict__ y, u64 ldy) {
  const int cgs = (mo + EK_LP_TN - 1) / EK_LP_TN, lc = ek_lp_lanes_c(cgs), ln = 32 / lc;
  const u64 ctiles = (u64)((cgs + lc - 1) / lc);
  const u64 tile = it / 32;
  const int lane = (int)(it % 32);
  const u64 i = (tile / ctiles) * (u64)ln + (u64)(lane / lc);
  const int cg = (int)(tile % ctiles) * lc + lane % lc;
  if (i >= nodes || cg >= cgs) return;
  const int v0 = cg * EK_LP_TN, nv = mo - v0 < EK_LP_TN ? mo - v0 : EK_LP_TN;
  const real* xr = x + i * ldx;
  const bool vx = (ldx & 3ull) == 0 && ek_aligned16(x);
  const bool vw = nv == EK_LP_TN && (mo & 3) == 0 && ek_aligned16(w);
  real c[DIM][EK_LP_TN];
  EK_UNROLL
  for (int m = 0; m < DIM; ++m)
    EK_UNROLL
    for (int j = 0; j < EK_LP_TN; ++j) c[m][j] = (real)0;
  int u = 0;
  for (; u + 4 <= mi; u += 4) {
    real a[4 * DIM];
    EK_UNROLL
    for (int q = 0; q < DIM; ++q) ek_ld4(xr + u * DIM + 4 * q, vx, a + 4 * q);
    EK_UNROLL
    for (int s = 0; s < 4; ++s) {
      const real* wr = w + (u64)(u + s) * (u64)mo + v0;
      real b[EK_LP_TN];
      if (vw) {
        ek_ld4(wr, true, b);
        ek_ld4(wr + 4, true, b + 4);
      } else {
        EK_UNROLL
        for (int j = 0; j < EK_LP_TN; ++j) b[j] = j < nv ? wr[j] : (real)0;
      }
      EK_UNROLL
      for (int m = 0; m < DIM; ++m)
        EK_UNROLL
        for (int j = 0; j < EK_LP_TN; ++j) c[m][j] += a[s * DIM + m] * b[j];
    }
  }
  for (; u < mi; ++u) {
    const real* wr = w + (u64)u * (u64)mo + v0;
    EK_UNROLL
    for (int m = 0; m < DIM; ++m) {
      real a = xr[u * DIM + m];
      EK_UNROLL
      for (int j = 0; j < EK_LP_TN; ++j) c[m][j] += a * (j < nv ? wr[j] : (real)0);
    }
  }
  // the iteration's outputs: nv·DIM consecutive values from column v0
  real* yr = y + i * ldy + (u64)v0 * DIM;
  if (nv == EK_LP_TN && (ldy & 3ull) == 0 && ek_aligned16(y)) {
    EK_UNROLL
    for (int q = 0; q < 2 * DIM; ++q) {
      real o[4], old[4];
      if (acc) ek_ld4(yr + 4 * q, true, old);
      EK_UNROLL
      for (int r = 0; r < 4; ++r) {
        int e = 4 * q + r;  // e = j·DIM + m
        o[r] = alpha * c[e % DIM][e / DIM] + (acc ? old[r] : (real)0);
      }
      EK_UNROLL
      for (int h = 0; h < 4; h += EK_VW) ek_vst(yr + 4 * q + h, o + h);
    }
    return;
  }
  for (int j = 0; j < nv; ++j)
    EK_UNROLL
    for (int m = 0; m < DIM; ++m) {
      real* p = yr + j * DIM + m;
      *p = alpha * c[m][j] + (acc ? *p : (real)0);
    }
}
// One kernel per dim (l = 1, 2, 3; the host sends other blocks through the products), so
// each gets the registers its own tile needs.
#define EK_LINEAR_PATH(DIM)                                                                    \
  extern "C" __global__ void __launch_bounds__(EK_BLOCK)                                       \
      ek_linear_path##DIM(u64 nodes, int mi, int mo, const real* __restrict__ x, u64 ldx,      \
                          const real* __restrict__ w, real alpha, int acc,                     \
                          real* __restrict__ y, u64 ldy) {                                     \
    EK_FOR(it, ek_lp_iterations(nodes, mo))                                                    \
    ek_linear_path_it<DIM>(it, nodes, mi, mo, x, ldx, w, alpha, acc, y, ldy);                  \
  }
EK_LINEAR_PATH(3)
EK_LINEAR_PATH(5)
EK_LINEAR_PATH(7)

// e3nn Gate: x [n, ns + ng + Σ mul d] → y [n, ns + Σ mul d]; gtab = [nblocks, (mul, d)...].
extern "C" __global__ void ek_gate(u64 nodes, const real* __restrict__ x, real* y, int ns,
                                   int ng, const int* __restrict__ gtab, int din, int dout,
                                   real c) {
  EK_FOR(i, nodes * (u64)dout) {
    u64 n = i / (u64)dout;
    int j = (int)(i % (u64)dout);
    const real* xs = x + n * (u64)din;
    if (j < ns) {
      y[i] = c * ek_silu(xs[j]);
      continue;
    }
    int k = j - ns, gi = 0;
    for (int b = 0; b < gtab[0]; ++b) {
      int mul = gtab[1 + 2 * b], d = gtab[2 + 2 * b];
      if (k < mul * d) {
        gi += k / d;
        break;
      }
      k -= mul * d;
      gi += mul;
    }
    real g = c * ek_silu(xs[ns + gi]);
    y[i] = g * xs[ns + ng + (j - ns)];
  }
}

// Gate backward: gx [n, din] from x and gy [n, dout].
extern "C" __global__ void ek_gate_backward(u64 nodes, const real* __restrict__ x,
                                            const real* __restrict__ gy, real* gx, int ns,
                                            int ng, const int* __restrict__ gtab, int din,
                                            int dout, real c) {
  EK_FOR(i, nodes * (u64)din) {
    u64 n = i / (u64)din;
    int j = (int)(i % (u64)din);
    const real* xs = x + n * (u64)din;
    const real* gys = gy + n * (u64)dout;
    if (j < ns) {
      gx[i] = c * ek_silu_grad(xs[j]) * gys[j];
    } else if (j < ns + ng) {
      // gate gi: its block's components start at `off` in the gated part
      int gi = j - ns, off = 0, d = 1, k = gi;
      for (int b = 0; b < gtab[0]; ++b) {
        int mul = gtab[1 + 2 * b];
        d = gtab[2 + 2 * b];
        if (k < mul) {
          off += k * d;
          break;
        }
        off += mul * d;
        k -= mul;
      }
      real dg = (real)0;
      for (int m = 0; m < d; ++m) dg += xs[ns + ng + off + m] * gys[ns + off + m];
      gx[i] = c * ek_silu_grad(xs[j]) * dg;
    } else {
      int k = j - ns - ng, gi = 0;
      for (int b = 0; b < gtab[0]; ++b) {
        int mul = gtab[1 + 2 * b], d = gtab[2 + 2 * b];
        if (k < mul * d) {
          gi += k / d;
          break;
        }
        k -= mul * d;
        gi += mul;
      }
      real g = c * ek_silu(xs[ns + gi]);
      gx[i] = g * gys[ns + (j - ns - ng)];
    }
  }
}

// ---------------------------------------------------------------------------------------
// Radial MLP helpers and small vector ops

// TF32 split for the radial MLP's last product ("3xTF32": a·b ≈ a_hi·b_hi + a_hi·b_lo +
// a_lo·b_hi, each factor exact in TF32, so tensor cores give about float accuracy): row r
// of `a [rows, k]` becomes row r of `cat [rows, 3k]` = [hi | hi | lo] (ek_split_tf32, or
// ek_mlp_hidden as it writes h). float only (the double build never launches either).
__device__ inline real ek_tf32(real x) {
#ifdef EK_REAL_F32
  unsigned u = __float_as_uint(x);
  u = (u + 0x1000u) & 0xffffe000u;  // nearest of the 10 kept mantissa bits
  return __uint_as_float(u);
#else
  return x;
#endif
}

// h = c · silu(pre)
extern "C" __global__ void ek_act(u64 n, const real* __restrict__ pre, real* h, real c) {
  EK_FOR(i, n) h[i] = c * ek_silu(pre[i]);
}

// g *= c · silu'(pre)
extern "C" __global__ void ek_act_backward(u64 n, const real* __restrict__ pre, real* g,
                                           real c) {
  EK_FOR(i, n) g[i] *= c * ek_silu_grad(pre[i]);
}

// ---------------------------------------------------------------------------------------
// Radial MLP hidden layers, fused: one edge per thread, the hidden layers' products and
// activations in registers. Forward: from emb [E, nb] to the last hidden activation
// h_K [E, h_K] (the input of the last product, which stays a library product). Backward:
// from g_last = ∂/∂h_K [E, h_K] (the last product's transpose) to g_emb [E, nb], recomputing
// the forward from emb. Widths are compile-time (the generated prelude's EK_MLP_*_CASES, one
// `case` per hidden shape of the model), so every per-edge vector is a register array.
//
// Performance design (H100, SevenNet-0 8 → 64 → 64, f32):
// * weights: the launch's hidden weights (scaled by 1/√a, rows padded to the vector width,
//   `tables::mlp_pack`) are staged once per block in shared memory (18 KB in f32, 36 KB in
//   f64; beyond EK_MLP_SMEM_VECS they are read from global memory, the same uniform
//   pattern through L1). Every thread of a warp works on its own edge at the same (i, j), so
//   each weight read is a broadcast (no bank conflicts), as a 16-byte vector (float4 /
//   double2): one shared load per 4 FMAs in f32 (2 in f64, whose FMA rate is half).
// * registers: only what a layer needs lives. Forward: h1 [64] (8·64 FMAs from emb [8]),
//   then h2 in output chunks of EK_MLP_CH_FWD = 16 (h1 [64] + 16 accumulators), each chunk
//   activated and stored at once. Backward: h1 [64], the input gradient g1 [64] and
//   EK_MLP_CH_BWD = 4 outputs of layer 2 at a time (pre-activation, then
//   g2 = g_last · c·silu'(pre), then g1 += W2[:, chunk] · g2); the first layer's
//   pre-activations are recomputed from emb (8 FMAs each) instead of kept. ptxas (sm_90,
//   f32): forward 127 registers (2 blocks of 256 per SM), backward 255 (1 block; 4 accumulator
//   chains + 64 independent scatter sums per chunk keep a warp issuing), no spills beyond a
//   few bytes; the weight loads are `ek_wld` (see there). f64 (chunks of 8 / 2): forward
//   178 registers, backward 255 with ~600 bytes of spills (to L1; f64 is the accuracy mode).
// * chunk loops are not unrolled (`#pragma unroll 1`): one chunk's straight-line code is
//   ~1.3k instructions, the whole layer unrolled would not stay in the instruction cache.
// * memory per edge: forward reads 32 B, writes 256 B; backward reads 288 B, writes 32 B
//   (vector accesses; rows are 16-byte aligned when the width is a multiple of the vector).
// * work per edge: forward 4.6k FMAs, backward 9.7k (≈ 0.15 / 0.3 ms of FP32 peak at
//   917 504 edges; targets 0.3 / 0.5 ms).

// A weight vector W[p .. p + EK_VW) (staged in shared memory, or global). On the device an
// explicit load that the optimiser cannot hoist out of the edge loop: the weights are the
// same for every edge, and NVVM hoisted plain loads of all of them in front of the loop,
// where thousands compete for registers (measured by ptxas for sm_90: 255 registers and
// 1.2 KB (forward) / 4.6 KB (backward) of spills per thread; with this load: 127 registers
// and none forward, 255 and 8 bytes of stack backward). ptxas still schedules these loads
// within an edge to hide their latency.
#if defined(__CUDA_ARCH__)
__device__ __forceinline__ void ek_wld(const real* p, real* v) {
#if EK_MLP_SMEM_VECS > 0
  unsigned a = (unsigned)__cvta_generic_to_shared(p);
#ifdef EK_REAL_F32
  asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];"
               : "=f"(v[0]), "=f"(v[1]), "=f"(v[2]), "=f"(v[3])
               : "r"(a));
#else
  asm volatile("ld.shared.v2.f64 {%0, %1}, [%2];" : "=d"(v[0]), "=d"(v[1]) : "r"(a));
#endif
#else
  size_t a = __cvta_generic_to_global(p);
#ifdef EK_REAL_F32
  asm volatile("ld.global.nc.v4.f32 {%0, %1, %2, %3}, [%4];"
               : "=f"(v[0]), "=f"(v[1]), "=f"(v[2]), "=f"(v[3])
               : "l"(a));
#else
  asm volatile("ld.global.nc.v2.f64 {%0, %1}, [%2];" : "=d"(v[0]), "=d"(v[1]) : "l"(a));
#endif
#endif
}
#else
__device__ __forceinline__ void ek_wld(const real* p, real* v) { ek_vld(p, v); }
#endif

// x[0..N) = p[0..N) (a row of N: vector loads when N is a multiple of the vector width).
template <int N>
__device__ __forceinline__ void ek_mlp_load(const real* __restrict__ p, real* x) {
  if (N % EK_VW == 0) {
    EK_UNROLL
    for (int i = 0; i < N; i += EK_VW) ek_vld(p + i, x + i);
  } else {
    EK_UNROLL
    for (int i = 0; i < N; ++i) x[i] = p[i];
  }
}

// v[0..EK_VW) = p[j..j + EK_VW) of a row of N (0 past the end).
template <int N>
__device__ __forceinline__ void ek_mlp_load_part(const real* __restrict__ p, int j, real* v) {
  if (N % EK_VW == 0 && j < N) {
    ek_vld(p + j, v);
  } else {
    EK_UNROLL
    for (int q = 0; q < EK_VW; ++q) v[q] = j + q < N ? p[j + q] : (real)0;
  }
}

// y[0..BP) = c · silu(x[0..A) · W), W [A][BP] (the padding columns are 0, so are their y).
template <int A, int BP>
__device__ __forceinline__ void ek_mlp_full(const real* x, const real* W, real c, real* y) {
  real acc[BP];
  EK_UNROLL
  for (int j = 0; j < BP; ++j) acc[j] = (real)0;
  EK_UNROLL
  for (int i = 0; i < A; ++i) {
    real xi = x[i];
    EK_UNROLL
    for (int j = 0; j < BP; j += EK_VW) {
      real w[EK_VW];
      ek_wld(W + i * BP + j, w);
      EK_UNROLL
      for (int q = 0; q < EK_VW; ++q) acc[j + q] += xi * w[q];
    }
  }
  EK_UNROLL
  for (int j = 0; j < BP; ++j) y[j] = c * ek_silu(acc[j]);
}

// Rows of h (or of its split) leave the forward through a per-warp shared tile when the
// real is float and the row a multiple of 4 and of the chunk (`staged`): written by each
// lane as its own row (one edge per thread) with 16-byte stores 4·B bytes apart, a warp's
// store touches 32 half-sectors, and the H100 took the split rows (705 MB at 917,504 edges)
// at ≈ 0.4 TB/s: the step lost 10 ms (session 11). Through the tile a warp's store covers
// 8 rows × 64 contiguous bytes, whole sectors: ek_mlp_hidden with the split 0.53 ms per
// call (h alone: no faster than direct stores; the kernel is bound by its FMAs and
// broadcast weight loads, not by writing h).
// EK_MLP_TILE_LD: the tile's row stride in floats (16 + 4: a quarter-warp's 16-byte
// writes, one per lane and row, hit distinct banks).
#define EK_MLP_TILE_LD 20
#ifdef EK_REAL_F32
#define EK_MLP_TILE_FLOATS (EK_BLOCK / 32 * 32 * EK_MLP_TILE_LD)
#else
#define EK_MLP_TILE_FLOATS 1
#endif

// The last hidden layer, forward: h[0..B) = c · silu(x[0..A) · W), W [A][BP], CH outputs
// at a time, for edge `e` (< edges, or a warp's tail lane: computes, stores nothing) into
// `out` (rows of B) and/or as its TF32 split into `cat` (rows of 3B: [hi | hi | lo],
// ek_split_tf32's), either may be null: the split written here saves the 3xTF32 product's
// separate pass over h (one read of B and three writes per row). Every lane of a warp
// calls it together (EK_FOR_WARP), `tile` its warp's EK_MLP_TILE_FLOATS / warps floats.
template <int A, int B, int BP, int CH>
__device__ __forceinline__ void ek_mlp_last_fwd(const real* x, const real* W, real c,
                                                real* out, real* cat, u64 e, u64 edges,
                                                float* tile) {
#ifdef EK_REAL_F32
  constexpr bool staged = B % 4 == 0 && BP % CH == 0 && CH == 16;
  const int lane = threadIdx.x & 31;
#endif
  EK_NO_UNROLL
  for (int j0 = 0; j0 < BP; j0 += CH) {
    real acc[CH];
    EK_UNROLL
    for (int j = 0; j < CH; ++j) acc[j] = (real)0;
    EK_UNROLL
    for (int i = 0; i < A; ++i) {
      real xi = x[i];
      EK_UNROLL
      for (int j = 0; j < CH; j += EK_VW) {
        if (BP % CH == 0 || j0 + j < BP) {
          real w[EK_VW];
          ek_wld(W + i * BP + j0 + j, w);
          EK_UNROLL
          for (int q = 0; q < EK_VW; ++q) acc[j + q] += xi * w[q];
        }
      }
    }
#ifdef EK_REAL_F32
    if (staged) {
      // this lane's 16 values → its tile row; then the warp's 32 rows × 16 out, 4 lanes a row
      EK_UNROLL
      for (int j = 0; j < CH; ++j) tile[lane * EK_MLP_TILE_LD + j] = c * ek_silu(acc[j]);
      __syncwarp();
      const u64 base = e - (u64)lane;
      EK_UNROLL
      for (int k = 0; k < CH / 4; ++k) {
        const int idx = lane + 32 * k, row = idx >> 2, part = idx & 3;
        if (base + row < edges) {
          float4 h = *(const float4*)(tile + row * EK_MLP_TILE_LD + 4 * part);
          const u64 r = base + row;
          const int col = j0 + 4 * part;
          if (out) *(float4*)(out + r * B + col) = h;
          if (cat) {
            float4 hi = {ek_tf32(h.x), ek_tf32(h.y), ek_tf32(h.z), ek_tf32(h.w)};
            float4 lo = {ek_tf32(h.x - hi.x), ek_tf32(h.y - hi.y), ek_tf32(h.z - hi.z),
                         ek_tf32(h.w - hi.w)};
            real* row3 = cat + r * 3ull * B;
            *(float4*)(row3 + col) = hi;
            *(float4*)(row3 + B + col) = hi;
            *(float4*)(row3 + 2 * B + col) = lo;
          }
        }
      }
      __syncwarp();  // the tile is rewritten by the next chunk
      continue;
    }
#endif
    if (e >= edges) continue;
    real* orow = out ? out + e * B : 0;
    real* crow = cat ? cat + e * 3ull * B : 0;
    EK_UNROLL
    for (int j = 0; j < CH; j += EK_VW) {
      real h[EK_VW], hi[EK_VW], lo[EK_VW];
      EK_UNROLL
      for (int q = 0; q < EK_VW; ++q) {
        h[q] = c * ek_silu(acc[j + q]);
        hi[q] = ek_tf32(h[q]);
        lo[q] = ek_tf32(h[q] - hi[q]);
      }
      if (B % EK_VW == 0) {
        if (BP % CH == 0 || j0 + j < B) {
          if (orow) ek_vst(orow + j0 + j, h);
          if (crow) {
            ek_vst(crow + j0 + j, hi);
            ek_vst(crow + B + j0 + j, hi);
            ek_vst(crow + 2 * B + j0 + j, lo);
          }
        }
      } else {
        EK_UNROLL
        for (int q = 0; q < EK_VW; ++q)
          if (j0 + j + q < B) {
            if (orow) orow[j0 + j + q] = h[q];
            if (crow) {
              crow[j0 + j + q] = hi[q];
              crow[B + j0 + j + q] = hi[q];
              crow[2 * B + j0 + j + q] = lo[q];
            }
          }
      }
    }
  }
}

// The last hidden layer, backward: with pre = x[0..A) · W (W [A][BP]) and
// g = g_last[0..B) · c · silu'(pre), gin[0..A) = W · g (gin [AP], the padding 0).
template <int A, int AP, int B, int BP, int CH>
__device__ __forceinline__ void ek_mlp_last_bwd(const real* x, const real* W, real c,
                                                const real* __restrict__ gl, real* gin) {
  EK_UNROLL
  for (int i = 0; i < AP; ++i) gin[i] = (real)0;
  EK_NO_UNROLL
  for (int j0 = 0; j0 < BP; j0 += CH) {
    real acc[CH];
    EK_UNROLL
    for (int j = 0; j < CH; ++j) acc[j] = (real)0;
    EK_UNROLL
    for (int i = 0; i < A; ++i) {
      real xi = x[i];
      EK_UNROLL
      for (int j = 0; j < CH; j += EK_VW) {
        if (BP % CH == 0 || j0 + j < BP) {
          real w[EK_VW];
          ek_wld(W + i * BP + j0 + j, w);
          EK_UNROLL
          for (int q = 0; q < EK_VW; ++q) acc[j + q] += xi * w[q];
        }
      }
    }
    EK_UNROLL
    for (int j = 0; j < CH; j += EK_VW) {
      real g[EK_VW];
      ek_mlp_load_part<B>(gl, j0 + j, g);
      EK_UNROLL
      for (int q = 0; q < EK_VW; ++q) acc[j + q] = g[q] * c * ek_silu_grad(acc[j + q]);
    }
    EK_UNROLL
    for (int i = 0; i < A; ++i) {
      real s = (real)0;
      EK_UNROLL
      for (int j = 0; j < CH; j += EK_VW) {
        if (BP % CH == 0 || j0 + j < BP) {
          real w[EK_VW];
          ek_wld(W + i * BP + j0 + j, w);
          EK_UNROLL
          for (int q = 0; q < EK_VW; ++q) s += w[q] * acc[j + q];
        }
      }
      gin[i] += s;
    }
  }
}

// A hidden layer before the last, backward: with pre = x[0..A) · W (W [A][BP]),
// gin[0..A) = W · (g[0..BP) · c · silu'(pre)) (gin [AP], the padding 0). pre is recomputed
// here, EK_VW outputs at a time.
template <int A, int AP, int BP>
__device__ __forceinline__ void ek_mlp_mid_bwd(const real* x, const real* W, real c,
                                               const real* g, real* gin) {
  EK_UNROLL
  for (int i = 0; i < AP; ++i) gin[i] = (real)0;
  EK_UNROLL
  for (int j = 0; j < BP; j += EK_VW) {
    real pre[EK_VW];
    EK_UNROLL
    for (int q = 0; q < EK_VW; ++q) pre[q] = (real)0;
    EK_UNROLL
    for (int i = 0; i < A; ++i) {
      real w[EK_VW];
      ek_wld(W + i * BP + j, w);
      EK_UNROLL
      for (int q = 0; q < EK_VW; ++q) pre[q] += x[i] * w[q];
    }
    EK_UNROLL
    for (int q = 0; q < EK_VW; ++q) pre[q] = g[j + q] * c * ek_silu_grad(pre[q]);
    EK_UNROLL
    for (int i = 0; i < A; ++i) {
      real w[EK_VW];
      ek_wld(W + i * BP + j, w);
      EK_UNROLL
      for (int q = 0; q < EK_VW; ++q) gin[i] += w[q] * pre[q];
    }
  }
}

// Two hidden layers, backward in two passes (`ek_mlp_hidden_backward2`, the A/B variant of
// the register design above): pass A forms g2 = g_last · c·silu'(h1 · W2) and writes it over
// g_last (its row, owned by this thread); pass B reads g2 back (h1 no longer live) and, EK_VW
// first-layer units at a time, g1 = W2 · g2, g1 · c·silu'(emb · W1), g_emb += W1 · g1. Live:
// h1 [64] + a chunk (A), then g2 [64] + emb + g_emb (B): ptxas sm_90 f32 fits 2 blocks of 256
// per SM (128 registers, ~60 bytes of spill), for 512 more bytes of L2 traffic per edge.
// W1 [A0][AP], W2 [A][BP] (A = the first hidden width, AP padded; B, BP the second's).
template <int A, int B, int BP, int CH>
__device__ __forceinline__ void ek_mlp_last_bwd_to_row(const real* x, const real* W, real c,
                                                       real* gl) {
  EK_NO_UNROLL
  for (int j0 = 0; j0 < BP; j0 += CH) {
    real acc[CH];
    EK_UNROLL
    for (int j = 0; j < CH; ++j) acc[j] = (real)0;
    EK_UNROLL
    for (int i = 0; i < A; ++i) {
      real xi = x[i];
      EK_UNROLL
      for (int j = 0; j < CH; j += EK_VW) {
        if (BP % CH == 0 || j0 + j < BP) {
          real w[EK_VW];
          ek_wld(W + i * BP + j0 + j, w);
          EK_UNROLL
          for (int q = 0; q < EK_VW; ++q) acc[j + q] += xi * w[q];
        }
      }
    }
    EK_UNROLL
    for (int j = 0; j < CH; j += EK_VW) {
      real g[EK_VW];
      ek_mlp_load_part<B>(gl, j0 + j, g);
      EK_UNROLL
      for (int q = 0; q < EK_VW; ++q) g[q] = g[q] * c * ek_silu_grad(acc[j + q]);
      if (B % EK_VW == 0) {
        if (BP % CH == 0 || j0 + j < B) ek_vst(gl + j0 + j, g);
      } else {
        EK_UNROLL
        for (int q = 0; q < EK_VW; ++q)
          if (j0 + j + q < B) gl[j0 + j + q] = g[q];
      }
    }
  }
}

template <int A0, int A, int AP, int B, int BP>
__device__ __forceinline__ void ek_mlp_first_from_row(const real* x0, const real* W1,
                                                      const real* W2, real c, const real* g2row,
                                                      real* ge) {
  real g2[BP];
  EK_UNROLL
  for (int j = 0; j < BP; j += EK_VW) ek_mlp_load_part<B>(g2row, j, g2 + j);
  EK_UNROLL
  for (int k = 0; k < A0; ++k) ge[k] = (real)0;
  EK_NO_UNROLL
  for (int i0 = 0; i0 < AP; i0 += EK_VW) {
    real s[EK_VW];
    EK_UNROLL
    for (int q = 0; q < EK_VW; ++q) {
      s[q] = (real)0;
      if (AP == A || i0 + q < A) {
        EK_UNROLL
        for (int j = 0; j < BP; j += EK_VW) {
          real w[EK_VW];
          ek_wld(W2 + (i0 + q) * BP + j, w);
          EK_UNROLL
          for (int r = 0; r < EK_VW; ++r) s[q] += w[r] * g2[j + r];
        }
      }
    }
    real pre[EK_VW];
    EK_UNROLL
    for (int q = 0; q < EK_VW; ++q) pre[q] = (real)0;
    EK_UNROLL
    for (int k = 0; k < A0; ++k) {
      real w[EK_VW];
      ek_wld(W1 + k * AP + i0, w);
      EK_UNROLL
      for (int q = 0; q < EK_VW; ++q) pre[q] += x0[k] * w[q];
    }
    EK_UNROLL
    for (int q = 0; q < EK_VW; ++q) s[q] *= c * ek_silu_grad(pre[q]);
    EK_UNROLL
    for (int k = 0; k < A0; ++k) {
      real w[EK_VW];
      ek_wld(W1 + k * AP + i0, w);
      EK_UNROLL
      for (int q = 0; q < EK_VW; ++q) ge[k] += w[q] * s[q];
    }
  }
}

// p[0..N) = g (accumulate == 0) or p + g.
template <int N>
__device__ __forceinline__ void ek_mlp_store_grad(real* p, const real* g, int accumulate) {
  if (N % EK_VW == 0) {
    EK_UNROLL
    for (int i = 0; i < N; i += EK_VW) {
      real v[EK_VW];
      if (accumulate) {
        ek_vld(p + i, v);
        EK_UNROLL
        for (int q = 0; q < EK_VW; ++q) v[q] += g[i + q];
      } else {
        EK_UNROLL
        for (int q = 0; q < EK_VW; ++q) v[q] = g[i + q];
      }
      ek_vst(p + i, v);
    }
  } else {
    EK_UNROLL
    for (int i = 0; i < N; ++i) p[i] = accumulate ? p[i] + g[i] : g[i];
  }
}

// The launch's packed hidden weights w [wlen] (wlen a multiple of EK_VW) as `W`: staged in
// shared memory by the whole block (before any edge: every thread reaches the barrier),
// or global memory when the prelude sets EK_MLP_SMEM_VECS 0.
#if EK_MLP_SMEM_VECS > 0
#define EK_MLP_STAGE(w, wlen)                                                  \
  __shared__ ek_vec ek_mlp_sw[EK_MLP_SMEM_VECS];                               \
  for (int i = threadIdx.x; i < (wlen) / EK_VW && i < EK_MLP_SMEM_VECS;        \
       i += blockDim.x)                                                        \
    ek_mlp_sw[i] = ((const ek_vec*)(w))[i];                                    \
  __syncthreads();                                                             \
  const real* W = (const real*)ek_mlp_sw;
#else
#define EK_MLP_STAGE(w, wlen) const real* W = (w);
#endif

// out [E, h_K] = the last hidden activation of hidden shape `shape` from emb [E, nb], and/or
// its TF32 split cat [E, 3 h_K] (either may be null; ek_mlp_last_fwd).
extern "C" __global__ void __launch_bounds__(EK_BLOCK) ek_mlp_hidden(u64 edges, int shape, const real* __restrict__ emb,
                                         const real* __restrict__ w, int wlen, real c,
                                         real* out, real* cat) {
  EK_MLP_STAGE(w, wlen)
  __shared__ __align__(16) float ek_mlp_tile[EK_MLP_TILE_FLOATS];
  float* tile = ek_mlp_tile + (threadIdx.x >> 5) * (EK_MLP_TILE_FLOATS / (EK_BLOCK / 32));
  switch (shape) {
    EK_MLP_FWD_CASES
    default:
      break;
  }
}

// g_emb [E, nb] (accumulate: +=) = ∂⟨g_last, h_K⟩/∂emb of hidden shape `shape`.
extern "C" __global__ void __launch_bounds__(EK_BLOCK)
    ek_mlp_hidden_backward(u64 edges, int shape,
                                                  const real* __restrict__ emb,
                                                  const real* __restrict__ w, int wlen, real c,
                                                  const real* __restrict__ g_last, real* g_emb,
                                                  int accumulate) {
  EK_MLP_STAGE(w, wlen)
  switch (shape) {
    EK_MLP_BWD_CASES
    default:
      break;
  }
}

// ek_mlp_hidden_backward's two-pass variant (see ek_mlp_last_bwd_to_row; shapes with other
// than two hidden layers run the register design here too). Overwrites g_last.
#ifdef EK_REAL_F32
#define EK_MLP_BWD2_BLOCKS 2
#else
#define EK_MLP_BWD2_BLOCKS 1  // f64: two blocks' 128 registers would spill kilobytes
#endif
extern "C" __global__ void __launch_bounds__(EK_BLOCK, EK_MLP_BWD2_BLOCKS)
    ek_mlp_hidden_backward2(u64 edges, int shape, const real* __restrict__ emb,
                            const real* __restrict__ w, int wlen, real c, real* g_last,
                            real* g_emb, int accumulate) {
  EK_MLP_STAGE(w, wlen)
  switch (shape) {
    EK_MLP_BWD2_CASES
    default:
      break;
  }
}

// Row-major C[m, n] = alpha · A[m, k] · op(B) + beta · C, op(B) = B [k, n] (trans_b = 0) or
// Bᵀ of B [n, k] (trans_b = 1). The fallback when cuBLAS is absent: register tiles of
// EK_LIN_NODES rows × EK_LIN_COLS columns per iteration (ceil(m / EK_LIN_NODES) ·
// ceil(n / EK_LIN_COLS) iterations, column groups fastest), k ascending per element.
extern "C" __global__ void ek_gemm(u64 m, u64 n, u64 k, real alpha, const real* __restrict__ A,
                                   const real* __restrict__ B, int trans_b, real beta,
                                   real* C) {
  u64 ncg = (n + EK_LIN_COLS - 1) / EK_LIN_COLS;
  u64 nrg = (m + EK_LIN_NODES - 1) / EK_LIN_NODES;
  EK_FOR(i, nrg * ncg) {
    u64 r0 = (i / ncg) * EK_LIN_NODES, c0 = (i % ncg) * EK_LIN_COLS;
    u64 row[EK_LIN_NODES], col[EK_LIN_COLS];
    for (int q = 0; q < EK_LIN_NODES; ++q) row[q] = r0 + q < m ? r0 + q : m - 1;
    for (int c = 0; c < EK_LIN_COLS; ++c) col[c] = c0 + c < n ? c0 + c : n - 1;
    real acc[EK_LIN_NODES][EK_LIN_COLS];
    for (int q = 0; q < EK_LIN_NODES; ++q)
      for (int c = 0; c < EK_LIN_COLS; ++c) acc[q][c] = (real)0;
    for (u64 p = 0; p < k; ++p) {
      real a[EK_LIN_NODES], b[EK_LIN_COLS];
      for (int q = 0; q < EK_LIN_NODES; ++q) a[q] = A[row[q] * k + p];
      for (int c = 0; c < EK_LIN_COLS; ++c) b[c] = trans_b ? B[col[c] * k + p] : B[p * n + col[c]];
      for (int q = 0; q < EK_LIN_NODES; ++q)
        for (int c = 0; c < EK_LIN_COLS; ++c) acc[q][c] += a[q] * b[c];
    }
    for (int q = 0; q < EK_LIN_NODES; ++q) {
      if (r0 + q >= m) break;
      for (int c = 0; c < EK_LIN_COLS; ++c) {
        if (c0 + c >= n) break;
        u64 o = (r0 + q) * n + c0 + c;
        C[o] = alpha * acc[q][c] + (beta != (real)0 ? beta * C[o] : (real)0);
      }
    }
  }
}

// dst = src (first != 0) or dst + src.
extern "C" __global__ void ek_accumulate(u64 n, real* dst, const real* __restrict__ src,
                                         int first) {
  EK_FOR(i, n) dst[i] = first ? src[i] : dst[i] + src[i];
}

// A radial row per edge pair (edges e and e + pairs share row e): the pair's weight
// gradient, the first n elements (pairs rows) plus the next n (the reversed edges' rows).
extern "C" __global__ void ek_pair_sum(u64 n, real* g) {
  EK_FOR(i, n) g[i] += g[i + n];
}

// TF32 split for the radial MLP's last product: see ek_tf32 (above).
extern "C" __global__ void ek_split_tf32(u64 rows, int k, const real* __restrict__ a,
                                         real* __restrict__ cat) {
  EK_FOR(i, rows * (u64)k) {
    u64 r = i / (u64)k;
    u64 j = i % (u64)k;
    real v = a[i];
    real hi = ek_tf32(v);
    real lo = ek_tf32(v - hi);
    real* o = cat + r * 3ull * (u64)k;
    o[j] = hi;
    o[(u64)k + j] = hi;
    o[2ull * (u64)k + j] = lo;
  }
}
// The same split of a strided block (the e3nn Linear products): row r of `a` (`k` values
// from `a + r·lda`) becomes [hi | hi | lo] at `cat + r·ldc` (3k values). Consecutive
// threads read and write consecutive elements of a row.
extern "C" __global__ void ek_split_tf32_rows(u64 rows, int k, const real* __restrict__ a,
                                              u64 lda, real* __restrict__ cat, u64 ldc) {
  EK_FOR(i, rows * (u64)k) {
    u64 r = i / (u64)k;
    u64 j = i % (u64)k;
    real v = a[r * lda + j];
    real hi = ek_tf32(v);
    real lo = ek_tf32(v - hi);
    real* o = cat + r * ldc;
    o[j] = hi;
    o[(u64)k + j] = hi;
    o[2ull * (u64)k + j] = lo;
  }
}

// ---------------------------------------------------------------------------------------
// 3xTF32 tensor-core product for the radial MLP's backward: C[m, n] = alpha · A[m, k] · Bᵀ
// (+ beta · C), A row-major [m, k] (fp32, e.g. gw [E, 960]), B = W [n, k] (n ≤ 64) given
// pre-split as `tables::tf32x3_nt_pack`. Each A element is split in registers into
// hi = tf32(x), lo = tf32(x − hi) (ek_tf32's rounding) and every 8-wide k step runs three
// `mma.m16n8k8` per 16×8 output tile: A_lo·B_hi, A_hi·B_lo, A_hi·B_hi (small terms first),
// FP32 accumulation; A_lo·B_lo (≈ 2^-22 relative) is dropped. Unlike the forward's 3xTF32
// (`ek_split_tf32` + cuBLAS), nothing but A itself is read: splitting gw in memory would
// triple its traffic.
//
// Tiling: a CTA of EK_BLOCK threads owns EK_BLOCK rows × 64 columns (grid-stride over such
// row tiles); warp w the rows 32w..32w+32 (two 16-row m-tiles × eight 8-column n-tiles: 64
// accumulators per lane). k runs in chunks of 32 (four k steps). Per chunk a lane loads, per
// row it holds (g and g+8 of each m-tile, g = lane/4), two float4 of A straight into
// registers: k0+4t..4t+4 and k0+16+4t..16+4t+4 (t = lane%4) — 64 contiguous bytes per row and
// instruction, full 32-byte sectors — for the chunk after the one being multiplied (one
// chunk of prefetch). The 32 k of a chunk are visited in a permuted order (`tables::
// tc_k_order`): k step s takes each lane's values 2s and 2s+1 as its fragment columns t and
// t+4, so no shuffle is needed; the B pack uses the same order. B chunks (16 KB: 4 k steps
// × 8 n-tiles × 32 lanes × {b0_hi, b1_hi, b0_lo, b1_lo}) are copied by the whole CTA into
// a triple-buffered shared tile (cp.async on sm_80+; 48 KB) and read as one conflict-free
// float4 per lane per (k step, n-tile). One barrier per chunk: chunk q (counted over all of
// the CTA's tiles) goes to buffer q % 3, staged by a thread that has passed the barrier of
// chunk q − 2, so every warp has finished reading chunk q − 3 from that buffer.
// Traffic per row: 4k bytes of A (once, from HBM) + 4n bytes of C; per CTA and chunk 16 KB
// of B from L2 (B pack: ceil(k/32) · 16 KB, 491 KB for k = 960). Work: 3 · 2 · m · 64 ·
// ceil(k/32)·32 tensor-core FLOP (m = 917 504, k = 960: 3.5 GB read, 338 GFLOP TF32).
// k: any ≥ 1 (16-byte loads when k % 4 == 0, else scalar; the chunk tail reads zeros);
// rows past m read zeros and are not written. sm_80+ only: on older archs (and in the double
// build) the kernel is empty and the host never launches it (`Exec::tensor_cores`).
#define EK_TC_CHUNK 4096
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define EK_HAS_MMA_TF32 1
// D = A·B + D on tensor cores: a [4], b [2] TF32 bit patterns in the PTX ISA's m16n8k8
// fragment layout (lane = 4g + t: a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4);
// b0 (k t, n g), b1 (k t+4, n g); d0 (g, 2t), d1 (g, 2t+1), d2 (g+8, 2t), d3 (g+8, 2t+1)).
__device__ __forceinline__ void ek_mma_m16n8k8_tf32(float d[4], const unsigned a[4],
                                                    const unsigned b[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void ek_cp_async16(void* smem, const void* gmem) {
  unsigned s = (unsigned)__cvta_generic_to_shared(smem);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void ek_cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
template <int N>
__device__ __forceinline__ void ek_cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
// Brings the 128-byte line at p into L1 (no register, no wait).
__device__ __forceinline__ void ek_prefetch_l1(const void* p) {
  asm volatile("prefetch.global.L1 [%0];\n" ::"l"(p));
}
// ek_cp_async16, or 16 zero bytes into smem when !ok (gmem is then not read).
__device__ __forceinline__ void ek_cp_async16_zfill(void* smem, const void* gmem, bool ok) {
  unsigned s = (unsigned)__cvta_generic_to_shared(smem);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem),
               "r"(ok ? 16 : 0));
}
// Dynamic shared memory (the host sets its size per launch).
#define EK_DYN_SHARED(type, name, count) extern __shared__ __align__(16) type name[]
#elif defined(EK_HOST_MMA)
// The CPU emulation defines ek_mma_m16n8k8_tf32 (tests/common: the same fragment layout,
// the lanes' fragments exchanged through a staging area); copies are immediate.
#define EK_HAS_MMA_TF32 1
__device__ __forceinline__ void ek_cp_async16(void* smem, const void* gmem) {
  *(float4*)smem = *(const float4*)gmem;
}
__device__ __forceinline__ void ek_cp_async_commit() {}
template <int N>
__device__ __forceinline__ void ek_cp_async_wait() {}
__device__ __forceinline__ void ek_prefetch_l1(const void*) {}
__device__ __forceinline__ void ek_cp_async16_zfill(void* smem, const void* gmem, bool ok) {
  if (ok) {
    *(float4*)smem = *(const float4*)gmem;
  } else {
    *(float4*)smem = float4{0.0f, 0.0f, 0.0f, 0.0f};
  }
}
// One static copy (the emulation runs one block at a time).
#define EK_DYN_SHARED(type, name, count) static __align__(16) type name[count]
#endif

#if defined(EK_HAS_MMA_TF32) && defined(EK_REAL_F32)
// v[0..4) = row[c .. c+4), v[4..8) = row[c+16 .. c+20); zeros past k or for a missing row.
__device__ __forceinline__ void ek_tc_load(const float* row, int c, int k, bool vec, float v[8]) {
  EK_UNROLL
  for (int h = 0; h < 2; ++h) {
    int cc = c + 16 * h;
    if (row && vec && cc < k) {
      float4 q = *(const float4*)(row + cc);
      v[4 * h] = q.x;
      v[4 * h + 1] = q.y;
      v[4 * h + 2] = q.z;
      v[4 * h + 3] = q.w;
    } else {
      EK_UNROLL
      for (int q = 0; q < 4; ++q) v[4 * h + q] = row && cc + q < k ? row[cc + q] : 0.0f;
    }
  }
}
// d += A·B in 3xTF32 (small terms first: A_lo·B_hi, A_hi·B_lo, then A_hi·B_hi; A_lo·B_lo,
// ≈ 2^-22 relative, dropped): A as its hi/lo fragments, B as a packed float4
// (b0 hi, b1 hi, b0 lo, b1 lo).
__device__ __forceinline__ void ek_mma3(float d[4], const unsigned ahi[4], const unsigned alo[4],
                                        float4 b) {
  unsigned bhi[2] = {__float_as_uint(b.x), __float_as_uint(b.y)};
  unsigned blo[2] = {__float_as_uint(b.z), __float_as_uint(b.w)};
  ek_mma_m16n8k8_tf32(d, alo, bhi);
  ek_mma_m16n8k8_tf32(d, ahi, blo);
  ek_mma_m16n8k8_tf32(d, ahi, bhi);
}
// d[j] += A·B_j for the 8 n tiles j (3xTF32; B_j = b[j · stride]), tile by tile. (Issuing
// them pass by pass instead — the 8 tiles' A_lo·B_hi, then A_hi·B_lo, then A_hi·B_hi — gave
// ptxas the same registers and the step the same time on the H100, session 13.)
__device__ __forceinline__ void ek_mma3_x8(float d[8][4], const unsigned ahi[4],
                                           const unsigned alo[4], const float4* b, int stride) {
  EK_UNROLL
  for (int j = 0; j < 8; ++j) ek_mma3(d[j], ahi, alo, b[j * stride]);
}
// hi, lo of x as TF32 bit patterns (ek_tf32's rounding).
__device__ __forceinline__ void ek_tc_split(float x, unsigned* hi, unsigned* lo) {
  float h = ek_tf32(x);
  *hi = __float_as_uint(h);
  *lo = __float_as_uint(ek_tf32(x - h));
}
// A warp's accumulator tiles (MT m16 tiles × eight n8 tiles × four values per lane) = 0.
template <int MT>
__device__ __forceinline__ void ek_tc_tiles_zero(float t[MT][8][4]) {
  EK_UNROLL
  for (int mt = 0; mt < MT; ++mt)
    EK_UNROLL
    for (int j = 0; j < 8; ++j)
      EK_UNROLL
      for (int q = 0; q < 4; ++q) t[mt][j][q] = 0.0f;
}
// Chunk c of the B pack (EK_TC_CHUNK floats) into shared `dst` by cp.async, by the whole CTA.
__device__ __forceinline__ void ek_tc_copy_chunk(float* dst, const float* __restrict__ bp, int c) {
  const float* src = bp + (u64)c * EK_TC_CHUNK;
  for (int i = threadIdx.x; i < EK_TC_CHUNK / 4; i += blockDim.x)
    ek_cp_async16(dst + 4 * i, src + 4 * i);
}
// ... as its own commit group.
__device__ __forceinline__ void ek_tc_stage(float* dst, const float* __restrict__ bp, int c) {
  ek_tc_copy_chunk(dst, bp, c);
  ek_cp_async_commit();
}
// A values held in registers (ek_gemm_tf32x3_nt's chunk ahead), as ek_tc_chunk reads them.
template <int MT>
struct EkTcRegs {
  float (*v)[8];
  __device__ __forceinline__ float operator()(int i, int q) const { return v[i][q]; }
};
// acc += one 32-wide k chunk of A·Bᵀ for MT m16 tiles: `cur(i, q)` the lane's A values (row
// slot i = 2·mt + half: row 16·mt + 8·half + g, the chunk's columns 4t..4t+3 and
// 16+4t..16+4t+3; registers, or read from shared memory where they are used),
// `bs` the chunk's B pack (float4 per (k step, n tile, lane); shared memory or global).
// The chunk's 12 mma per tile go to a fresh accumulator, added to acc by FP32 adds: the
// tensor cores' accumulation truncates, and chained over k = 960 (360 mma) its bias grew to
// about one TF32 pass's error; 12 in a row keep it below FP32's.
template <int MT, class AV>
__device__ __forceinline__ void ek_tc_chunk(const AV& cur, const float4* bs, int lane,
                                            float acc[MT][8][4]) {
  float part[MT][8][4];
  ek_tc_tiles_zero<MT>(part);
  EK_UNROLL
  for (int s = 0; s < 4; ++s) {
    unsigned ahi[MT][4], alo[MT][4];
    EK_UNROLL
    for (int mt = 0; mt < MT; ++mt) {
      // a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4)
      ek_tc_split(cur(2 * mt, 2 * s), &ahi[mt][0], &alo[mt][0]);
      ek_tc_split(cur(2 * mt + 1, 2 * s), &ahi[mt][1], &alo[mt][1]);
      ek_tc_split(cur(2 * mt, 2 * s + 1), &ahi[mt][2], &alo[mt][2]);
      ek_tc_split(cur(2 * mt + 1, 2 * s + 1), &ahi[mt][3], &alo[mt][3]);
    }
    EK_UNROLL
    for (int j = 0; j < 8; ++j) {
      float4 b = bs[(s * 8 + j) * 32 + lane];
      EK_UNROLL
      for (int mt = 0; mt < MT; ++mt) ek_mma3(part[mt][j], ahi[mt], alo[mt], b);
    }
  }
  EK_UNROLL
  for (int mt = 0; mt < MT; ++mt)
    EK_UNROLL
    for (int j = 0; j < 8; ++j)
      EK_UNROLL
      for (int r = 0; r < 4; ++r) acc[mt][j][r] += part[mt][j][r];
}
// C[rows r0 .. r0 + 16·MT) = alpha · acc + beta · C, rows past m and columns past n skipped
// (d0 (g, 2t), d1 (g, 2t+1), d2 (g+8, 2t), d3 (g+8, 2t+1)).
template <int MT>
__device__ __forceinline__ void ek_tc_store(float acc[MT][8][4], u64 r0, u64 m, int n,
                                            real alpha, real beta, real* __restrict__ C,
                                            int lane) {
  const int g = lane >> 2, t = lane & 3;
  EK_UNROLL
  for (int mt = 0; mt < MT; ++mt)
    EK_UNROLL
    for (int h = 0; h < 2; ++h) {
      u64 r = r0 + 16 * mt + 8 * h + g;
      if (r >= m) continue;
      EK_UNROLL
      for (int j = 0; j < 8; ++j)
        EK_UNROLL
        for (int q = 0; q < 2; ++q) {
          int col = 8 * j + 2 * t + q;
          if (col < n) {
            real* o = C + r * (u64)n + col;
            *o = alpha * acc[mt][j][2 * h + q] + (beta != 0.0f ? beta * *o : 0.0f);
          }
        }
    }
}
#endif

// MT m-tiles (16 rows each) per warp: MT = 2 holds 64 accumulators (+ 64 partials) per lane,
// one CTA per SM. (MT = 1 — half of that, 128 registers, two CTAs per SM — measured no
// faster on the H100: 2.576 vs 2.561 ms at 917,504 × 960 → 64, session 11.)
#if defined(EK_HAS_MMA_TF32) && defined(EK_REAL_F32)
template <int MT>
__device__ __forceinline__ void ek_gemm_tf32x3_nt_body(u64 m, int n, int k, real alpha,
                                                       const real* __restrict__ A,
                                                       const real* __restrict__ bp, real beta,
                                                       real* __restrict__ C,
                                                       float (*ek_tc_b)[EK_TC_CHUNK],
                                                       int prefetch) {
  unsigned q = 0;  // chunks of B this CTA has multiplied (all tiles): chunk q in buffer q % 3
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int chunks = (k + 31) / 32;
  const bool vec = (k & 3) == 0;
  const u64 rows_per_cta = (u64)blockDim.x / 2 * MT;
  const u64 tiles = (m + rows_per_cta - 1) / rows_per_cta;
  for (u64 tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const u64 r0 = tile * rows_per_cta + 16 * MT * (u64)warp;
    // row slot i: m-tile i/2, half i%2 → row r0 + 16(i/2) + 8(i%2) + g
    const float* rows[2 * MT];
    EK_UNROLL
    for (int i = 0; i < 2 * MT; ++i) {
      u64 r = r0 + 16 * (i >> 1) + 8 * (i & 1) + g;
      rows[i] = r < m ? A + r * (u64)k : 0;
    }
    float acc[MT][8][4];
    ek_tc_tiles_zero<MT>(acc);
    float cur[2 * MT][8], nxt[2 * MT][8];
    ek_tc_stage(ek_tc_b[q % 3], bp, 0);
    EK_UNROLL
    for (int i = 0; i < 2 * MT; ++i) ek_tc_load(rows[i], 4 * t, k, vec, cur[i]);
    for (int c = 0; c < chunks; ++c, ++q) {
      if (prefetch && c + 2 < chunks && t == 0) {
        // chunk c + 2 of the warp's rows into L1 (one 128-byte line per row): the register
        // loads of chunk c + 1 below wait on DRAM otherwise (Nsight Compute, session 12:
        // a third of the stalls on L1TEX, 8 warps per SM). Opt-in, untimed.
        EK_UNROLL
        for (int i = 0; i < 2 * MT; ++i)
          if (rows[i]) ek_prefetch_l1(rows[i] + 32 * (c + 2));
      }
      if (c + 1 < chunks) {
        ek_tc_stage(ek_tc_b[(q + 1) % 3], bp, c + 1);
        EK_UNROLL
        for (int i = 0; i < 2 * MT; ++i) ek_tc_load(rows[i], 32 * (c + 1) + 4 * t, k, vec, nxt[i]);
        ek_cp_async_wait<1>();
      } else {
        ek_cp_async_wait<0>();
      }
      __syncthreads();  // chunk c of B is in shared memory (every thread's copies)
      const float4* bs = (const float4*)ek_tc_b[q % 3];
      ek_tc_chunk<MT>(EkTcRegs<MT>{cur}, bs, lane, acc);
      if (c + 1 < chunks) {
        EK_UNROLL
        for (int i = 0; i < 2 * MT; ++i)
          EK_UNROLL
          for (int q = 0; q < 8; ++q) cur[i][q] = nxt[i][q];
      }
    }
    ek_tc_store<MT>(acc, r0, m, n, alpha, beta, C, lane);
  }
}
#endif

extern "C" __global__ void __launch_bounds__(EK_BLOCK, 1)
    ek_gemm_tf32x3_nt(u64 m, int n, int k, real alpha, const real* __restrict__ A,
                      const real* __restrict__ bp, real beta, real* __restrict__ C,
                      int prefetch) {
#if defined(EK_HAS_MMA_TF32) && defined(EK_REAL_F32)
  __shared__ __align__(16) float ek_tc_b[3][EK_TC_CHUNK];
  ek_gemm_tf32x3_nt_body<2>(m, n, k, alpha, A, bp, beta, C, ek_tc_b, prefetch);
#endif
}

// ek_gemm_tf32x3_nt's product (the same B pack, fragment order and per-chunk partial sums)
// with both operands streamed by cp.async into rings of EK_NTP_STAGES shared-memory stages,
// EK_NTP_STAGES − 1 chunks in flight while one computes: each warp's 32 rows of A into a
// ring of its own, the block's chunk of B into a shared one; one block barrier per chunk.
// Why: ek_gemm_tf32x3_nt (its next chunk of A in registers, one ahead) runs at 2.6 ms for
// 917,504 × 960 → 64 on the H100, 44 % of its DRAM floor, with a third of its warps' stalls
// on those loads (Nsight Compute); a first form of this kernel with B read through L1 and
// no barriers measured 3.05 ms (L1 hit rate 69 %: half of its stalls on B's loads).
// Needs k % 4 == 0 and A 16-byte aligned (the host checks; ek_gemm_tf32x3_nt otherwise);
// rows past m and columns past k are zero-filled copies. Dynamic shared memory:
// EK_NTP_STAGES × (EK_BLOCK / 32 warps × 4 KB of A + 16 KB of B), set by the host.
// A stage's layout: row r (0..31) of the warp's rows at r·32 floats, its float4 segment s at
// (s ^ 4·(r & 1)): a quarter-warp's 16-byte reads (rows g, g+1, segments t or t + 4) then
// fall on distinct banks.
#define EK_NTP_STAGE 1024
#if defined(EK_HAS_MMA_TF32) && defined(EK_REAL_F32)
// The lane's A values of a stage, read where used (row slot i: row 8i + g; q < 4: segment t,
// else t + 4), so that no register holds a chunk ahead of its use.
struct EkNtpRows {
  const float* st;
  int g, t;
  __device__ __forceinline__ float operator()(int i, int q) const {
    const int r = 8 * i + g, seg = (q < 4 ? t : t + 4) ^ ((r & 1) << 2);
    return st[r * 32 + 4 * seg + (q & 3)];
  }
};
// The pair form's A values (`pair` > 0: A row r is A[r] + A[r + pair], a radial row per edge
// pair): the stage holds the warp's 16 rows in slots 0..15 and their partners in 16..31;
// row slot i (0, 1) is row 8i + g, summed with its partner where used.
struct EkNtpPairRows {
  const float* st;
  int g, t;
  __device__ __forceinline__ float operator()(int i, int q) const {
    const int r = 8 * i + g, seg = (q < 4 ? t : t + 4) ^ ((r & 1) << 2);
    return st[r * 32 + 4 * seg + (q & 3)] + st[(r + 16) * 32 + 4 * seg + (q & 3)];
  }
};
// The block's place in its sequence of (tile, chunk) items: the tile's first row (tiles of
// EK_BLOCK rows, or EK_BLOCK / 2 in the pair form; gridDim.x tiles apart), the chunk and the
// ring stage; no division.
struct EkNtpCursor {
  u64 row0;
  int c, stage;
  __device__ __forceinline__ void next(int chunks, u64 step) {
    stage = stage + 1 == EK_NTP_STAGES ? 0 : stage + 1;
    if (++c == chunks) c = 0, row0 += step;
  }
};
// Copies the cursor's item (if its tile starts before m) into its stage — the warp's rows
// of A into `ring`, the chunk of B (by the whole block) into `bring` — as one commit group
// per call (empty past the last item, so the wait count stays uniform).
// Pair form (pair > 0): the warp's 16 rows in slots 0..15, rows + pair in 16..31.
__device__ __forceinline__ void ek_ntp_issue(float* ring, float* bring, const float* A,
                                             const float* bp, u64 m, int k,
                                             const EkNtpCursor& it, int warp, int lane,
                                             u64 pair) {
  if (it.row0 < m) {
    const int seg = lane & 7;
    const int col = 32 * it.c + 4 * seg;
    float* st = ring + it.stage * EK_NTP_STAGE;
    EK_UNROLL
    for (int j = 0; j < 8; ++j) {
      const int r = (lane >> 3) + 4 * j;
      const u64 own = pair ? it.row0 + 16 * warp + (r & 15) : it.row0 + 32 * warp + r;
      const u64 row = pair && r >= 16 ? own + pair : own;
      const bool ok = own < m && col < k;
      ek_cp_async16_zfill(st + r * 32 + 4 * (seg ^ ((r & 1) << 2)),
                          ok ? A + row * (u64)k + col : A, ok);
    }
    ek_tc_copy_chunk(bring + it.stage * EK_TC_CHUNK, bp, it.c);
  }
  ek_cp_async_commit();
}
#endif

#if defined(EK_HAS_MMA_TF32) && defined(EK_REAL_F32)
// MT = 2: rows of A as they are (32 per warp); MT = 1: the pair form (16 per warp, each the
// sum of two rows `pair` apart).
// (The shared memory comes from the kernel: a static in a template would be one object for
// every library that instantiates it in the CPU emulation, which loads several at once.)
template <int MT, class Rows>
__device__ __forceinline__ void ek_ntp_body(float* ek_ntp_smem, u64 m, int n, int k, real alpha,
                                            const real* A, const real* bp, real beta, real* C,
                                            u64 pair) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  float* bring = ek_ntp_smem;
  float* ring = ek_ntp_smem + EK_NTP_STAGES * EK_TC_CHUNK + warp * (EK_NTP_STAGES * EK_NTP_STAGE);
  const int chunks = (k + 31) / 32;
  const int tile = 16 * MT * (EK_BLOCK / 32);
  const u64 step = (u64)gridDim.x * tile;
  EkNtpCursor use{(u64)blockIdx.x * tile, 0, 0};
  EkNtpCursor fill = use;
  for (int f = 0; f + 1 < EK_NTP_STAGES; ++f, fill.next(chunks, step))
    ek_ntp_issue(ring, bring, A, bp, m, k, fill, warp, lane, pair);
  float acc[MT][8][4];
  for (; use.row0 < m; use.next(chunks, step), fill.next(chunks, step)) {
    ek_cp_async_wait<EK_NTP_STAGES - 2>();
    // this item's copies (every thread's) have landed, and every warp is done with the
    // previous item's stage, which the issue below refills
    __syncthreads();
    ek_ntp_issue(ring, bring, A, bp, m, k, fill, warp, lane, pair);
    if (use.c == 0) ek_tc_tiles_zero<MT>(acc);
    ek_tc_chunk<MT>(Rows{ring + use.stage * EK_NTP_STAGE, g, t},
                    (const float4*)(bring + use.stage * EK_TC_CHUNK), lane, acc);
    if (use.c + 1 == chunks)
      ek_tc_store<MT>(acc, use.row0 + 16 * MT * warp, m, n, alpha, beta, C, lane);
  }
  ek_cp_async_wait<0>();
}
#endif

// pair > 0: A row r (r < m) is A[r] + A[r + pair] (a radial row per edge pair: the pair's
// gradient summed as the rows are read, instead of a pass over them first).
extern "C" __global__ void __launch_bounds__(EK_BLOCK, 1)
    ek_gemm_tf32x3_nt_pipe(u64 m, int n, int k, real alpha, const real* __restrict__ A,
                           const real* __restrict__ bp, real beta, real* __restrict__ C,
                           u64 pair) {
#if defined(EK_HAS_MMA_TF32) && defined(EK_REAL_F32)
  EK_DYN_SHARED(float, ek_ntp_smem, EK_NTP_STAGES * (EK_BLOCK / 32 * EK_NTP_STAGE + EK_TC_CHUNK));
  if (pair)
    ek_ntp_body<1, EkNtpPairRows>(ek_ntp_smem, m, n, k, alpha, A, bp, beta, C, pair);
  else
    ek_ntp_body<2, EkNtpRows>(ek_ntp_smem, m, n, k, alpha, A, bp, beta, C, 0);
#endif
}

// ---------------------------------------------------------------------------------------
// A whole e3nn Linear in one launch on tensor cores (3xTF32): y[:, out blocks] (+)= alpha ·
// Σ_paths x[:, in block] · (coef·W_path ⊗ I_dim), each path done as `dim` products over the
// nodes with the component m fixed (A[node, u] = x[node, in_off + u·dim + m]), so the
// identity's zeros are never multiplied (cuBLAS's `W ⊗ I_dim` products do dim times the
// work) and a Linear is one launch instead of one per path (7net-0 at 4,096 atoms: 74
// products per step, ≈ 1.9 ms, each only a few microseconds of work).
// A block item is (a tile of `nb` nodes, a job: an output block's column tile of ≤ 64
// channels and the paths into it); its warps take one (16-node sub-tile, m) each ((nb/16) ·
// dim ≤ 8: the host's choice of nb). The item's (path, 32-channel chunk) stages stream
// through a ring of EK_LTC_STAGES shared-memory stages by cp.async, two in flight while one
// computes, one block barrier per stage: the chunk's input rows (32·dim contiguous floats
// per node; zeros past the path's channels and past the last node; plain copies where not
// 16-byte aligned) and its 16 KB of the B pack (`tables::linear_tc`: per path, k step and n
// tile a float4 per lane, b0/b1 hi and lo, pre-split; zero-padded to whole chunks and
// 64-column tiles so that every stage is 4 k steps × 8 n tiles of mma without branches).
// A values are read from the stage where used (row stride ≡ 4·dim mod 32 words: a warp's
// 32 reads fall on distinct banks for odd dim). Each k step's three products go to a fresh
// partial sum added in FP32 (ek_tc_chunk's remedy, per k step here). The output tile goes through shared memory
// so that each node's part of the block is written contiguously (added with `accumulate`).
// (A first form with B read through L1 per mma and two stages lost to cuBLAS's W ⊗ I
// products on the H100: 65.7 vs 64.2 ms per step at 32,768 atoms, long-scoreboard and
// fixed-latency stalls first.)
// Table: EK_LTC_JOB ints per job (out_off, dim, v0, nv, nb, first path, end path, 0), then
// EK_LTC_PATH ints per path (in_off, mul_in, mul_out, pack offset in float4s). Dynamic shared
// memory EK_LTC_STAGES × EK_LTC_STAGE floats (the host sets it). f32 with TF32 mma only.
#define EK_LTC_A 4608
#define EK_LTC_B (4 * 8 * 32 * 4)
#define EK_LTC_STAGE (EK_LTC_A + EK_LTC_B)
#define EK_LTC_STAGES 3
#define EK_LTC_JOB 8
#define EK_LTC_PATH 4
// Row padding of the input stage (32·dim + pad floats) and the output tile (64·dim + pad).
__device__ __forceinline__ int ek_ltc_pad(int dim) { return (4 * dim) & 31; }
// n tiles per k step of a path's pack: whole 64-column tiles.
__device__ __forceinline__ int ek_ltc_ntiles(int mul_out) { return 8 * ((mul_out + 63) / 64); }
#if defined(EK_HAS_MMA_TF32) && defined(EK_REAL_F32)
// Chunk c of a path `P` (rows of nodes node0 .. node0 + nb, row stride S; B of column tile
// v0) into stage `st`, as one commit group.
__device__ __forceinline__ void ek_ltc_issue(float* st, const float* __restrict__ x, u64 ldx,
                                             const float4* __restrict__ wp, u64 nodes,
                                             u64 node0, int nb, int dim, int S, int v0,
                                             const int* P, int c) {
  const int mul_in = P[1];
  const int left = mul_in - 32 * c;
  const int len = (left < 32 ? left : 32) * dim;  // the path's floats of a row in this chunk
  const int w = 32 * dim;                          // floats of a staged row
  const float* src = x + (u64)P[0] + (u64)(32 * c) * dim;
  if ((ldx & 3) == 0 && ((u64)src & 15) == 0 && (len & 3) == 0) {
    const int q = w / 4;
    for (int i = threadIdx.x; i < nb * q; i += blockDim.x) {
      const int r = i / q, col = 4 * (i - r * q);
      const u64 node = node0 + r;
      float* d = st + r * S + col;
      if (node < nodes && col < len) {
        ek_cp_async16(d, src + node * ldx + col);
      } else {
        *(float4*)d = float4{0.0f, 0.0f, 0.0f, 0.0f};
      }
    }
  } else {
    for (int i = threadIdx.x; i < nb * w; i += blockDim.x) {
      const int r = i / w, col = i - r * w;
      const u64 node = node0 + r;
      st[r * S + col] = node < nodes && col < len ? src[node * ldx + col] : 0.0f;
    }
  }
  // B: k steps 4c .. 4c + 3, n tiles v0/8 .. v0/8 + 7 (8 · 32 float4 contiguous per k step)
  const int ntt = ek_ltc_ntiles(P[2]);
  const float4* b = wp + (u64)P[3] + ((u64)(4 * c) * ntt + v0 / 8) * 32;
  float* sb = st + EK_LTC_A;
  for (int i = threadIdx.x; i < 4 * 8 * 32; i += blockDim.x) {
    const int ks = i >> 8, r = i & 255;
    ek_cp_async16(sb + 4 * i, b + (u64)ks * ntt * 32 + r);
  }
  ek_cp_async_commit();
}
#endif

extern "C" __global__ void __launch_bounds__(EK_BLOCK, 2)
    ek_linear_tc(u64 nodes, int njobs, const int* __restrict__ tab,
                 const float4* __restrict__ wp, const real* __restrict__ x, u64 ldx, real alpha,
                 int accumulate, real* __restrict__ y, u64 ldy) {
#if defined(EK_HAS_MMA_TF32) && defined(EK_REAL_F32)
  EK_DYN_SHARED(float, ek_ltc_smem, EK_LTC_STAGES * EK_LTC_STAGE);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int* paths = tab + EK_LTC_JOB * njobs;
  u64 items = 0;
  for (int j = 0; j < njobs; ++j) {
    const u64 nb = (u64)tab[EK_LTC_JOB * j + 4];
    items += (nodes + nb - 1) / nb;
  }
  for (u64 item = blockIdx.x; item < items; item += gridDim.x) {
    int j = 0;
    u64 tile = item;
    for (;; ++j) {
      const u64 nb = (u64)tab[EK_LTC_JOB * j + 4], tiles = (nodes + nb - 1) / nb;
      if (tile < tiles) break;
      tile -= tiles;
    }
    const int* J = tab + EK_LTC_JOB * j;
    const int out_off = J[0], dim = J[1], v0 = J[2], nv = J[3], nb = J[4], p0 = J[5], p1 = J[6];
    const u64 node0 = tile * (u64)nb;
    const int S = 32 * dim + ek_ltc_pad(dim);
    const int sub = warp / dim, m = warp - sub * dim;
    const bool active = sub < nb / 16;
    int stages = 0;
    for (int p = p0; p < p1; ++p) stages += (paths[EK_LTC_PATH * p + 1] + 31) / 32;
    float acc[8][4];
    EK_UNROLL
    for (int jn = 0; jn < 8; ++jn)
      EK_UNROLL
      for (int q = 0; q < 4; ++q) acc[jn][q] = 0.0f;
    int fp = p0, fc = 0;  // the next stage to copy: path, chunk
    // the first EK_LTC_STAGES − 1 stages in flight (empty groups past the last: the wait
    // count below stays uniform)
    for (int f = 0; f + 1 < EK_LTC_STAGES; ++f) {
      if (f < stages) {
        const int* P = paths + EK_LTC_PATH * fp;
        ek_ltc_issue(ek_ltc_smem + f * EK_LTC_STAGE, x, ldx, wp, nodes, node0, nb, dim, S, v0,
                     P, fc);
        if (32 * ++fc >= P[1]) fc = 0, ++fp;
      } else {
        ek_cp_async_commit();
      }
    }
    for (int s = 0; s < stages; ++s) {
      ek_cp_async_wait<EK_LTC_STAGES - 2>();
      // stage s is in shared memory (every thread's copies), and every warp is done with
      // stage s − 1, whose buffer the copy below refills
      __syncthreads();
      const int f = s + EK_LTC_STAGES - 1;
      if (f < stages) {
        const int* P = paths + EK_LTC_PATH * fp;
        ek_ltc_issue(ek_ltc_smem + (f % EK_LTC_STAGES) * EK_LTC_STAGE, x, ldx, wp, nodes, node0,
                     nb, dim, S, v0, P, fc);
        if (32 * ++fc >= P[1]) fc = 0, ++fp;
      } else {
        ek_cp_async_commit();
      }
      if (active) {
        const float* stage = ek_ltc_smem + (s % EK_LTC_STAGES) * EK_LTC_STAGE;
        const float* st = stage + (16 * sub + g) * S + m;
        const float4* bs = (const float4*)(stage + EK_LTC_A) + lane;
        // (k steps not unrolled: unrolled, ptxas hoists their loads and spills at 128)
        EK_NO_UNROLL
        for (int ks = 0; ks < 4; ++ks) {
          unsigned ahi[4], alo[4];
          const int u = 8 * ks + t;
          // a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4)
          ek_tc_split(st[u * dim], &ahi[0], &alo[0]);
          ek_tc_split(st[8 * S + u * dim], &ahi[1], &alo[1]);
          ek_tc_split(st[(u + 4) * dim], &ahi[2], &alo[2]);
          ek_tc_split(st[8 * S + (u + 4) * dim], &ahi[3], &alo[3]);
          // each k step's three products into a fresh partial, added in FP32: the chained
          // sums of the tensor cores truncate, and the step's energy and stress (sums over
          // atoms and edges) gather that bias (H100, call 1: 12 products chained per
          // partial left the triclinic cell's stress 4.1e-6 from sevenn float64 against
          // 1.8e-6 with cuBLAS FP32 products)
          float part[8][4];
          EK_UNROLL
          for (int jn = 0; jn < 8; ++jn)
            EK_UNROLL
            for (int q = 0; q < 4; ++q) part[jn][q] = 0.0f;
          ek_mma3_x8(part, ahi, alo, bs + ks * 8 * 32, 32);
          EK_UNROLL
          for (int jn = 0; jn < 8; ++jn)
            EK_UNROLL
            for (int q = 0; q < 4; ++q) acc[jn][q] += part[jn][q];
        }
      }
    }
    ek_cp_async_wait<0>();  // (only empty groups remain)
    __syncthreads();        // every warp is done with the stages: the output tile reuses them
    // alpha · acc into the output tile (row stride So; d0 (g, 2t), d1 (g, 2t+1), d2 (g+8,
    // 2t), d3 (g+8, 2t+1)), then the tile's rows into y, contiguous per node
    const int So = 64 * dim + ek_ltc_pad(dim);
    if (active) {
      float* o = ek_ltc_smem + (16 * sub + g) * So + m;
      EK_UNROLL
      for (int jn = 0; jn < 8; ++jn)
        EK_UNROLL
        for (int h = 0; h < 2; ++h)
          EK_UNROLL
          for (int q = 0; q < 2; ++q) {
            const int v = 8 * jn + 2 * t + q;
            if (v < nv) o[8 * h * So + v * dim] = alpha * acc[jn][2 * h + q];
          }
    }
    __syncthreads();
    const int w = nv * dim;
    real* yb = y + (u64)out_off + (u64)v0 * dim;
    for (int i = threadIdx.x; i < nb * w; i += blockDim.x) {
      const int r = i / w, col = i - r * w;
      const u64 node = node0 + r;
      if (node < nodes) {
        real* d = yb + node * ldy + col;
        const float v = ek_ltc_smem[r * So + col];
        *d = accumulate ? *d + v : v;
      }
    }
    __syncthreads();  // the tile is read before the next item's first copy
  }
#endif
}

// ---------------------------------------------------------------------------------------
// The fused radial MLP's backward on tensor cores (3xTF32), for hidden shape [nb ≤ 8, 64, 64]
// (SevenNet's): from g_last = ∂/∂h2 [E, 64] and emb [E, nb] to g_emb [E, nb] (+= with
// `accumulate`), recomputing the forward, with every product a warp-wide `mma.m16n8k8`:
//   pre1 = emb · W1 / √nb,  h1 = c·silu(pre1),  pre2 = h1 · W2 / 8,
//   g2 = g_last ⊙ c·silu'(pre2),  g1 = (g2 · W2ᵀ / 8) ⊙ c·silu'(pre1),  g_emb = g1 · W1ᵀ / √nb.
// Why: `ek_mlp_hidden_backward` does these 9.7k multiply-adds per edge on the FP32 pipes with
// a broadcast shared-memory load per 4 of them, 255 registers, one block per SM: 1.11 ms per
// call at 917,504 edges (H100, session 11), four times its FP32 bound; on tensor cores the
// work is ≈ 27 mma per edge and the kernel can approach its memory floor (g_last 235 MB).
// Measured (H100, session 12): 0.84 ms per call with pre1 kept (225 registers, one block per
// SM, latency-bound by Nsight Compute); pre1 is now recomputed from emb where g1 needs it
// (one more k step per n tile) so that 128 registers hold the rest and two blocks fit
// (≈ 0.71 ms per call); with `prefetch` the warp's next tile goes into L1 as this one
// computes (opt-in, untimed).
// A warp owns 16 edges (one m16 tile; grid-stride over tiles by warps, so every lane of a
// warp runs the same iterations, as `mma` needs). Each product's result is in the C
// fragment layout; it becomes the next product's A operand through the warp's shared tile
// [16][EK_TC_MLP_LD]. Each A value is split in registers into TF32 hi/lo (ek_tc_split); B
// comes pre-split (`tables::mlp_tc_pack`: W1, W2, W2ᵀ, W1ᵀ scaled, per (k step, n tile) a
// float4 per lane (b0 hi, b1 hi, b0 lo, b1 lo), read through L1); each 16×8 tile takes
// A_lo·B_hi + A_hi·B_lo + A_hi·B_hi, with every two k steps' partials added in FP32 (the
// tensor cores' accumulation truncates; see ek_gemm_tf32x3_nt). Rows past `edges` read zeros
// and are not written. f32 with TF32 mma only (the host launches it nowhere else).
#define EK_TC_MLP_LD 68
// The pack's float4 count: W1 (1 k step × 8 n tiles), W2 (8 × 8), W2ᵀ (8 × 8), W1ᵀ (8 × 1),
// 32 lanes each (73,728 bytes).
#define EK_TC_MLP_PACK (144 * 32)
// ... of which the forward's (W1, W2).
#define EK_TC_MLP_PACK_FWD (72 * 32)
// The first n float4 of the pack into the block's shared copy, behind one barrier.
__device__ __forceinline__ void ek_tc_pack_to_shared(float4* dst, const float4* __restrict__ bp,
                                                     int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = bp[i];
  __syncthreads();
}
#if defined(EK_HAS_MMA_TF32) && defined(EK_REAL_F32)
// A fragment of k step ks of the warp's tile T [16][EK_TC_MLP_LD], split.
__device__ __forceinline__ void ek_tc_afrag(const float* T, int ks, int g, int t, unsigned hi[4],
                                            unsigned lo[4]) {
  const int c = 8 * ks + t;
  ek_tc_split(T[g * EK_TC_MLP_LD + c], &hi[0], &lo[0]);
  ek_tc_split(T[(g + 8) * EK_TC_MLP_LD + c], &hi[1], &lo[1]);
  ek_tc_split(T[g * EK_TC_MLP_LD + c + 4], &hi[2], &lo[2]);
  ek_tc_split(T[(g + 8) * EK_TC_MLP_LD + c + 4], &hi[3], &lo[3]);
}
// Eight n tiles in the C layout (d0 (g, 2t), d1 (g, 2t+1), d2 (g+8, 2t), d3 (g+8, 2t+1)) into
// the tile, between two __syncwarp: the previous reads are done, the writes visible.
__device__ __forceinline__ void ek_tc_to_tile(float* T, const float v[8][4], int g, int t) {
  __syncwarp();
  EK_UNROLL
  for (int nt = 0; nt < 8; ++nt) {
    const int c = 8 * nt + 2 * t;
    T[g * EK_TC_MLP_LD + c] = v[nt][0];
    T[g * EK_TC_MLP_LD + c + 1] = v[nt][1];
    T[(g + 8) * EK_TC_MLP_LD + c] = v[nt][2];
    T[(g + 8) * EK_TC_MLP_LD + c + 1] = v[nt][3];
  }
  __syncwarp();
}
// out [16][64] (C layout) = T [16][64] · B, B the pack's 8 k steps × 8 n tiles at bp.
__device__ __forceinline__ void ek_tc_mm64(const float* T, const float4* __restrict__ bp, int g,
                                           int t, int lane, float out[8][4]) {
  EK_UNROLL
  for (int nt = 0; nt < 8; ++nt)
    EK_UNROLL
    for (int q = 0; q < 4; ++q) out[nt][q] = 0.0f;
  EK_NO_UNROLL
  for (int k2 = 0; k2 < 8; k2 += 2) {
    float part[8][4];
    EK_UNROLL
    for (int nt = 0; nt < 8; ++nt)
      EK_UNROLL
      for (int q = 0; q < 4; ++q) part[nt][q] = 0.0f;
    EK_UNROLL
    for (int ks = k2; ks < k2 + 2; ++ks) {
      unsigned ahi[4], alo[4];
      ek_tc_afrag(T, ks, g, t, ahi, alo);
      ek_mma3_x8(part, ahi, alo, bp + ks * 8 * 32 + lane, 32);
    }
    EK_UNROLL
    for (int nt = 0; nt < 8; ++nt)
      EK_UNROLL
      for (int q = 0; q < 4; ++q) out[nt][q] += part[nt][q];
  }
}
#endif

#if defined(EK_HAS_MMA_TF32) && defined(EK_REAL_F32)
// emb's A fragment for the warp's 16 edges (rows ra, rb; one k step: emb's columns t and
// t + 4, zero past nb or for a row past `edges`), split.
__device__ __forceinline__ void ek_tc_emb_frag(const real* __restrict__ emb, int nb, u64 ra,
                                               u64 rb, bool va, bool vb, int t, unsigned ahi[4],
                                               unsigned alo[4]) {
  ek_tc_split(va && t < nb ? emb[ra * nb + t] : 0.0f, &ahi[0], &alo[0]);
  ek_tc_split(vb && t < nb ? emb[rb * nb + t] : 0.0f, &ahi[1], &alo[1]);
  ek_tc_split(va && t + 4 < nb ? emb[ra * nb + t + 4] : 0.0f, &ahi[2], &alo[2]);
  ek_tc_split(vb && t + 4 < nb ? emb[rb * nb + t + 4] : 0.0f, &ahi[3], &alo[3]);
}
// n tile nt of pre1 = emb · W1 (C layout) from emb's split fragment (W1: the pack's first 8
// float4 per lane).
__device__ __forceinline__ void ek_tc_pre1_tile(const unsigned ahi[4], const unsigned alo[4],
                                                const float4* __restrict__ bp, int nt, int lane,
                                                float p[4]) {
  EK_UNROLL
  for (int q = 0; q < 4; ++q) p[q] = 0.0f;
  ek_mma3(p, ahi, alo, bp[nt * 32 + lane]);
}
// The forward of the warp's 16 edges: pre1 = emb · W1 (one k step), h1 = c·silu(pre1) into
// the tile, pre2 = h1 · W2 (C layout). Leaves h1 in the tile; pre1 is not kept (the
// backward recomputes it: 32 registers fewer through the products).
__device__ __forceinline__ void ek_tc_mlp_pre(const real* __restrict__ emb, int nb, u64 ra,
                                              u64 rb, bool va, bool vb,
                                              const float4* __restrict__ bp, real c, float* T,
                                              int g, int t, int lane, float pre2[8][4]) {
  unsigned ahi[4], alo[4];
  ek_tc_emb_frag(emb, nb, ra, rb, va, vb, t, ahi, alo);
  EK_UNROLL
  for (int nt = 0; nt < 8; ++nt) {
    float p[4];
    ek_tc_pre1_tile(ahi, alo, bp, nt, lane, p);
    EK_UNROLL
    for (int q = 0; q < 4; ++q) pre2[nt][q] = c * ek_silu(p[q]);  // h1, staged in pre2
  }
  ek_tc_to_tile(T, pre2, g, t);
  ek_tc_mm64(T, bp + 8 * 32, g, t, lane, pre2);
}
#endif

// The fused radial MLP's forward on tensor cores (3xTF32), hidden shape [nb ≤ 8, 64, 64]:
// out [E, 64] = h2 = c·silu(c·silu(emb · W1 / √nb) · W2 / 8) and/or its TF32 split
// cat [E, 192] = [hi | hi | lo] (either may be null; what `ek_mlp_hidden` writes), the
// products as in `ek_mlp_backward_tc` (below; the same pack). Why: `ek_mlp_hidden` does the
// 4.6k multiply-adds per edge on the FP32 pipes, bound by them and its broadcast weight loads
// (0.53 ms per call at 917,504 edges, H100, session 11), twice its store floor. The rows
// leave through the warp's tile: a warp store covers two whole rows (2 × 256 contiguous bytes).
#if defined(EK_HAS_MMA_TF32) && defined(EK_REAL_F32)
__device__ __forceinline__ void ek_mlp_forward_tc_body(u64 edges, int nb,
                                                       const real* __restrict__ emb,
                                                       const float4* __restrict__ bp, real c,
                                                       real* out, real* cat) {
  __shared__ __align__(16) float ek_tc_mlp_tile[EK_BLOCK / 32][16 * EK_TC_MLP_LD];
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  float* T = ek_tc_mlp_tile[threadIdx.x >> 5];
  const u64 tiles = (edges + 15) / 16;
  const u64 warps = (u64)gridDim.x * (blockDim.x >> 5);
  for (u64 tile = (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); tile < tiles;
       tile += warps) {
    const u64 ra = tile * 16 + g, rb = ra + 8;
    float pre2[8][4];
    ek_tc_mlp_pre(emb, nb, ra, rb, ra < edges, rb < edges, bp, c, T, g, t, lane, pre2);
    EK_UNROLL
    for (int nt = 0; nt < 8; ++nt)
      EK_UNROLL
      for (int q = 0; q < 4; ++q) pre2[nt][q] = c * ek_silu(pre2[nt][q]);
    ek_tc_to_tile(T, pre2, g, t);
    EK_UNROLL
    for (int k = 0; k < 8; ++k) {
      const int idx = lane + 32 * k, row = idx >> 4, col = 4 * (idx & 15);
      const u64 r = tile * 16 + row;
      if (r >= edges) continue;
      const float4 h = *(const float4*)(T + row * EK_TC_MLP_LD + col);
      if (out) *(float4*)(out + r * 64 + col) = h;
      if (cat) {
        const float4 hi = {ek_tf32(h.x), ek_tf32(h.y), ek_tf32(h.z), ek_tf32(h.w)};
        const float4 lo = {ek_tf32(h.x - hi.x), ek_tf32(h.y - hi.y), ek_tf32(h.z - hi.z),
                           ek_tf32(h.w - hi.w)};
        real* row3 = cat + r * 192;
        *(float4*)(row3 + col) = hi;
        *(float4*)(row3 + 64 + col) = hi;
        *(float4*)(row3 + 128 + col) = lo;
      }
    }
  }
}
#endif

extern "C" __global__ void __launch_bounds__(EK_BLOCK)
    ek_mlp_forward_tc(u64 edges, int nb, const real* __restrict__ emb,
                      const float4* __restrict__ bp, real c, real* out, real* cat) {
#if defined(EK_HAS_MMA_TF32) && defined(EK_REAL_F32)
  ek_mlp_forward_tc_body(edges, nb, emb, bp, c, out, cat);
#endif
}

#if defined(EK_HAS_MMA_TF32) && defined(EK_REAL_F32)
__device__ __forceinline__ void ek_mlp_backward_tc_body(u64 edges, int nb,
                                                        const real* __restrict__ emb,
                                                        const float4* __restrict__ bp, real c,
                                                        const real* __restrict__ g_last,
                                                        real* g_emb, int accumulate,
                                                        int prefetch) {
  __shared__ __align__(16) float ek_tc_mlp_tile[EK_BLOCK / 32][16 * EK_TC_MLP_LD];
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  float* T = ek_tc_mlp_tile[threadIdx.x >> 5];
  // the pack: W1 (1 k step × 8 n tiles), W2 (8 × 8) (ek_tc_mlp_pre), W2ᵀ (8 × 8), W1ᵀ (8 × 1)
  const float4* b_w2t = bp + 72 * 32;
  const float4* b_w1t = bp + 136 * 32;
  const u64 tiles = (edges + 15) / 16;
  const u64 warps = (u64)gridDim.x * (blockDim.x >> 5);
  for (u64 tile = (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); tile < tiles;
       tile += warps) {
    const u64 ra = tile * 16 + g, rb = ra + 8;
    const bool va = ra < edges, vb = rb < edges;
    // the warp's next tile: its g_last rows (32 lines of 128 bytes, one per lane) and emb
    // rows into L1 while this one computes (the loads below then wait on L1, not DRAM).
    // Opt-in (EQUIKERN_MODEL_PREFETCH), untimed.
    if (prefetch) {
      const u64 nr = (tile + warps) * 16 + (lane >> 1);
      if (nr < edges) {
        ek_prefetch_l1(g_last + nr * 64 + 32 * (lane & 1));
        if ((lane & 1) == 0) ek_prefetch_l1(emb + nr * nb);
      }
    }
    float pre2[8][4];
    ek_tc_mlp_pre(emb, nb, ra, rb, va, vb, bp, c, T, g, t, lane, pre2);
    // g2 = g_last ⊙ c·silu'(pre2)
    EK_UNROLL
    for (int nt = 0; nt < 8; ++nt) {
      const int col = 8 * nt + 2 * t;
      float2 ga = va ? *(const float2*)(g_last + ra * 64 + col) : float2{0.0f, 0.0f};
      float2 gb = vb ? *(const float2*)(g_last + rb * 64 + col) : float2{0.0f, 0.0f};
      pre2[nt][0] = ga.x * c * ek_silu_grad(pre2[nt][0]);
      pre2[nt][1] = ga.y * c * ek_silu_grad(pre2[nt][1]);
      pre2[nt][2] = gb.x * c * ek_silu_grad(pre2[nt][2]);
      pre2[nt][3] = gb.y * c * ek_silu_grad(pre2[nt][3]);
    }
    ek_tc_to_tile(T, pre2, g, t);
    // g1 = (g2 · W2ᵀ) ⊙ c·silu'(pre1), pre1 recomputed (emb re-read: L1/L2) one n tile at a time
    ek_tc_mm64(T, b_w2t, g, t, lane, pre2);
    unsigned ahi[4], alo[4];
    ek_tc_emb_frag(emb, nb, ra, rb, va, vb, t, ahi, alo);
    EK_UNROLL
    for (int nt = 0; nt < 8; ++nt) {
      float p[4];
      ek_tc_pre1_tile(ahi, alo, bp, nt, lane, p);
      EK_UNROLL
      for (int q = 0; q < 4; ++q) pre2[nt][q] *= c * ek_silu_grad(p[q]);
    }
    ek_tc_to_tile(T, pre2, g, t);
    // g_emb = g1 · W1ᵀ: 8 k steps, one n tile (columns 2t, 2t + 1 < nb)
    float ge[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    EK_NO_UNROLL
    for (int k2 = 0; k2 < 8; k2 += 2) {
      float part[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      EK_UNROLL
      for (int ks = k2; ks < k2 + 2; ++ks) {
        ek_tc_afrag(T, ks, g, t, ahi, alo);
        ek_mma3(part, ahi, alo, b_w1t[ks * 32 + lane]);
      }
      EK_UNROLL
      for (int q = 0; q < 4; ++q) ge[q] += part[q];
    }
    EK_UNROLL
    for (int q = 0; q < 2; ++q) {
      const int col = 2 * t + q;
      if (col < nb) {
        if (va) g_emb[ra * nb + col] = ge[q] + (accumulate ? g_emb[ra * nb + col] : 0.0f);
        if (vb) g_emb[rb * nb + col] = ge[2 + q] + (accumulate ? g_emb[rb * nb + col] : 0.0f);
      }
    }
  }
}
#endif

extern "C" __global__ void __launch_bounds__(EK_BLOCK, 2)
    ek_mlp_backward_tc(u64 edges, int nb, const real* __restrict__ emb,
                       const float4* __restrict__ bp, real c, const real* __restrict__ g_last,
                       real* g_emb, int accumulate, int prefetch) {
#if defined(EK_HAS_MMA_TF32) && defined(EK_REAL_F32)
  ek_mlp_backward_tc_body(edges, nb, emb, bp, c, g_last, g_emb, accumulate, prefetch);
#endif
}

// ek_mlp_backward_tc with the pack copied once per block into shared memory (dynamic,
// EK_TC_MLP_PACK float4 = 72 KB, beside the 34 KB of warp tiles: two blocks per SM), its B
// fragments then read from there instead of through L1; launched with at most two blocks
// per SM, which stride over all the tiles. Why: every warp reads the whole pack per 16
// edges (73.7 KB); the radial backward product's first pipelined form, with its B read
// through L1 the same way, spent half its stalls on those loads (session 13).
extern "C" __global__ void __launch_bounds__(EK_BLOCK, 2)
    ek_mlp_backward_tc_smem(u64 edges, int nb, const real* __restrict__ emb,
                            const float4* __restrict__ bp, real c,
                            const real* __restrict__ g_last, real* g_emb, int accumulate,
                            int prefetch) {
#if defined(EK_HAS_MMA_TF32) && defined(EK_REAL_F32)
  EK_DYN_SHARED(float4, ek_tc_mlp_pack, EK_TC_MLP_PACK);
  ek_tc_pack_to_shared(ek_tc_mlp_pack, bp, EK_TC_MLP_PACK);
  ek_mlp_backward_tc_body(edges, nb, emb, ek_tc_mlp_pack, c, g_last, g_emb, accumulate,
                          prefetch);
#endif
}

// ek_mlp_forward_tc with the pack's W1 and W2 (36 KB) in shared memory, as
// ek_mlp_backward_tc_smem: copied once per block, the resident blocks striding over the tiles.
extern "C" __global__ void __launch_bounds__(EK_BLOCK)
    ek_mlp_forward_tc_smem(u64 edges, int nb, const real* __restrict__ emb,
                           const float4* __restrict__ bp, real c, real* out, real* cat) {
#if defined(EK_HAS_MMA_TF32) && defined(EK_REAL_F32)
  EK_DYN_SHARED(float4, ek_tc_mlp_pack, EK_TC_MLP_PACK_FWD);
  ek_tc_pack_to_shared(ek_tc_mlp_pack, bp, EK_TC_MLP_PACK_FWD);
  ek_mlp_forward_tc_body(edges, nb, emb, ek_tc_mlp_pack, c, out, cat);
#endif
}

// ---------------------------------------------------------------------------------------
// The radial MLP's last product as 3xTF32 on tensor cores, without a split pass:
// out[rows, n] = alpha · h[rows, k] · W[k, n], h row-major (stride k). Each h element is
// split in registers (hi = tf32(x), lo = tf32(x − hi)) and out ≈ h_lo·W_hi + h_hi·W_lo +
// h_hi·W_hi with FP32 accumulation (mma.sync m16n8k8 tf32). W comes as its TF32 parts in
// fragment order (`tables::tf32x3_mma_fragments`): per 8-column tile and 8-deep k step,
// lane l's four values (hi of k t / t+4, lo of k t / t+4 at column g) are one 16-byte load,
// shared by the block's warps through L1 — no shared memory, no barriers.
// Why: cuBLAS needs the split rows [hi | hi | lo] in memory (an extra pass writing 3× h);
// here h is read once (k·4 bytes per row) and the output (n·4 bytes per row) is the floor.
// A warp owns 32 rows (two m16 tiles, h kept in registers for k ≤ 64) and walks the
// columns 4 tiles at a time (8 independent accumulator chains; each W fragment feeds both
// row tiles). Needs sm_80+, k % 8 == 0, k ≤ 64, n % 8 == 0 (the host checks; f64 builds
// and older archs get a stub). The mma is `ek_mma_m16n8k8_tf32` (above).
#define EK_RL_ROWS 256
#define EK_RL_KMAX 64
#define EK_RL_CT 4
#if defined(EK_HAS_MMA_TF32) && defined(EK_REAL_F32)
// p[0], p[1] = a, b (p 8-byte aligned: even n and col).
__device__ __forceinline__ void ek_st2(float* p, float a, float b) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<float2*>(p) = make_float2(a, b);
#else
  p[0] = a;
  p[1] = b;
#endif
}
extern "C" __global__ void __launch_bounds__(EK_BLOCK)
    ek_radial_last_tf32x3(u64 rows, int k, int n, const float* __restrict__ h,
                          const float4* __restrict__ wf, float alpha, float* __restrict__ out) {
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int ks = k >> 3, nct = n >> 3;
  for (u64 tile = blockIdx.x; tile * EK_RL_ROWS < rows; tile += gridDim.x) {
    const u64 r0 = tile * EK_RL_ROWS + (u64)warp * 32;
    // a[m][s][q]: row tile m, k step s, the m16n8k8 A fragment (g, t) (g+8, t) (g, t+4) (g+8, t+4)
    float a[2][EK_RL_KMAX / 8][4];
    EK_UNROLL
    for (int m = 0; m < 2; ++m) {
      EK_UNROLL
      for (int s = 0; s < EK_RL_KMAX / 8; ++s) {
        EK_UNROLL
        for (int q = 0; q < 4; ++q) {
          u64 row = r0 + (u64)(m * 16 + g + (q & 1) * 8);
          int col = s * 8 + t + (q >> 1) * 4;
          a[m][s][q] = (s < ks && row < rows) ? h[row * (u64)k + (u64)col] : 0.0f;
        }
      }
    }
    for (int c0 = 0; c0 < nct; c0 += EK_RL_CT) {
      float acc[2][EK_RL_CT][4];
      EK_UNROLL
      for (int m = 0; m < 2; ++m) {
        EK_UNROLL
        for (int c = 0; c < EK_RL_CT; ++c) {
          EK_UNROLL
          for (int q = 0; q < 4; ++q) acc[m][c][q] = 0.0f;
        }
      }
      EK_UNROLL
      for (int s = 0; s < EK_RL_KMAX / 8; ++s) {
        if (s < ks) {
          unsigned ahi[2][4], alo[2][4];
          EK_UNROLL
          for (int m = 0; m < 2; ++m) {
            EK_UNROLL
            for (int q = 0; q < 4; ++q) {
              float hi = ek_tf32(a[m][s][q]);
              ahi[m][q] = __float_as_uint(hi);
              alo[m][q] = __float_as_uint(ek_tf32(a[m][s][q] - hi));
            }
          }
          EK_UNROLL
          for (int c = 0; c < EK_RL_CT; ++c) {
            if (c0 + c < nct) {
              float4 f = wf[((u64)(c0 + c) * (u64)ks + (u64)s) * 32ull + (u64)lane];
              unsigned bhi[2] = {__float_as_uint(f.x), __float_as_uint(f.y)};
              unsigned blo[2] = {__float_as_uint(f.z), __float_as_uint(f.w)};
              EK_UNROLL
              for (int m = 0; m < 2; ++m) {
                ek_mma_m16n8k8_tf32(acc[m][c], alo[m], bhi);
                ek_mma_m16n8k8_tf32(acc[m][c], ahi[m], blo);
                ek_mma_m16n8k8_tf32(acc[m][c], ahi[m], bhi);
              }
            }
          }
        }
      }
      EK_UNROLL
      for (int c = 0; c < EK_RL_CT; ++c) {
        if (c0 + c < nct) {
          int col = (c0 + c) * 8 + 2 * t;
          EK_UNROLL
          for (int m = 0; m < 2; ++m) {
            u64 ra = r0 + (u64)(m * 16 + g), rb = ra + 8;
            if (ra < rows) ek_st2(out + ra * (u64)n + (u64)col, alpha * acc[m][c][0], alpha * acc[m][c][1]);
            if (rb < rows) ek_st2(out + rb * (u64)n + (u64)col, alpha * acc[m][c][2], alpha * acc[m][c][3]);
          }
        }
      }
    }
  }
}
#else
// f64 builds and archs before sm_80 never launch it (3xTF32 on tensor cores).
extern "C" __global__ void ek_radial_last_tf32x3(u64 rows, int k, int n, const real* h,
                                                 const real* wf, real alpha, real* out) {}
#endif

// Fill with a value (NaN poisoning in tests).
extern "C" __global__ void ek_fill(u64 n, real* p, real v) {
  EK_FOR(i, n) p[i] = v;
}
extern "C" __global__ void ek_fill_f64(u64 n, double* p, double v) {
  EK_FOR(i, n) p[i] = v;
}

// ---------------------------------------------------------------------------------------
// Energies, forces, virial (double)

// atomic[n] = out[n] · scale[t] + shift[t]; seed[n] = scale[t] (dE/d out).
extern "C" __global__ void ek_readout(u64 nodes, const real* __restrict__ out,
                                      const unsigned* __restrict__ types,
                                      const double* __restrict__ scale,
                                      const double* __restrict__ shift, double* atomic,
                                      real* seed) {
  EK_FOR(n, nodes) {
    unsigned t = types[n];
    atomic[n] = (double)out[n] * scale[t] + shift[t];
    seed[n] = (real)scale[t];
  }
}

// F_i = Σ_{e: receiver = i} f_e − Σ_{e: sender = i} f_e, the two CSR ranges merged in
// ascending edge order (the host model's order: + before − for a self-image edge).
// recv/send: [offsets (N+1) | edge ids (E) | other end (E)].
extern "C" __global__ void ek_forces(u64 nodes, const unsigned* __restrict__ recv,
                                     const unsigned* __restrict__ send,
                                     const double* __restrict__ fe, double* forces) {
  EK_FOR(i, nodes) {
    const unsigned* rid = recv + nodes + 1;
    const unsigned* sid = send + nodes + 1;
    unsigned a = recv[i], a_end = recv[i + 1], b = send[i], b_end = send[i + 1];
    double f0 = 0.0, f1 = 0.0, f2 = 0.0;
    while (a < a_end || b < b_end) {
      if (b >= b_end || (a < a_end && rid[a] <= sid[b])) {
        u64 e = rid[a++];
        f0 += fe[3 * e];
        f1 += fe[3 * e + 1];
        f2 += fe[3 * e + 2];
      } else {
        u64 e = sid[b++];
        f0 -= fe[3 * e];
        f1 -= fe[3 * e + 1];
        f2 -= fe[3 * e + 2];
      }
    }
    forces[3 * i] = f0;
    forces[3 * i + 1] = f1;
    forces[3 * i + 2] = f2;
  }
}

// Virial Σ_e v_e ⊗ f_e in two deterministic passes: part[c, 0..9] sums edges c, c + P,
// c + 2P…; part[c, 9] is their smallest |v_e|² (the overlap check; 1e300 without edges).
#define EK_VIRIAL_COMPS 10
extern "C" __global__ void ek_virial_partial(u64 edges, u64 parts, const double* __restrict__ vec,
                                             const double* __restrict__ fe, double* part) {
  EK_FOR(t, parts * EK_VIRIAL_COMPS) {
    u64 c = t / EK_VIRIAL_COMPS;
    int comp = (int)(t % EK_VIRIAL_COMPS), d = comp / 3, b = comp % 3;
    double acc = comp == 9 ? 1e300 : 0.0;
    for (u64 e = c; e < edges; e += parts) {
      if (comp == 9) {
        const double* v = vec + 3 * e;
        double r2 = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
        acc = r2 < acc ? r2 : acc;
      } else {
        acc += vec[3 * e + d] * fe[3 * e + b];
      }
    }
    part[t] = acc;
  }
}

// out[comp] = Σ_c part[c, comp], c ascending (comp < 9); out[9] = min_c part[c, 9].
extern "C" __global__ void ek_virial_final(u64 parts, const double* __restrict__ part,
                                           double* out) {
  EK_FOR(comp, EK_VIRIAL_COMPS) {
    double acc = comp == 9 ? 1e300 : 0.0;
    for (u64 c = 0; c < parts; ++c) {
      double v = part[c * EK_VIRIAL_COMPS + comp];
      if (comp == 9) acc = v < acc ? v : acc;
      else acc += v;
    }
    out[comp] = acc;
  }
}
